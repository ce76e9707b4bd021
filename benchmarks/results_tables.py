"""Markdown tables of the results files in ``docs/results/`` (see :mod:`make_tables`).

A table is a function ``<experiment>__<table>(result: dict) -> str`` of the experiment's JSON;
its name in a doc's block is ``<experiment>.<table>``. Each table ends with the line that says
where its figures come from (script, commit, load). The functions live in modules by concept:
``tables_methods`` (method experiments), ``tables_workflow`` (a user's workflow) and
``tables_gigapixel`` (scale), built from ``tables_format``.
"""

from __future__ import annotations

from collections.abc import Callable

import tables_gigapixel
import tables_methods
import tables_workflow

MODULES = (tables_methods, tables_workflow, tables_gigapixel)


def table_function(experiment: str, table: str) -> Callable[[dict], str] | None:
    """The function that makes table ``table`` of ``experiment``'s results; None when there is none."""
    for module in MODULES:
        function = getattr(module, f"{experiment}__{table}", None)
        if function is not None:
            return function
    return None
