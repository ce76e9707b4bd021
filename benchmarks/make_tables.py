"""The docs' result tables, generated from the results files the experiment scripts write.

    python benchmarks/make_tables.py           # rewrite every generated block in docs/ and README.md
    python benchmarks/make_tables.py --check   # exit 1, naming the blocks, when one is out of date

A generated block in a Markdown file is the text between

    <!-- results NAME -->
    ...
    <!-- /results -->

where ``NAME`` is ``<experiment>.<table>``: the table ``<table>`` (a function of
:mod:`results_tables`) of ``docs/results/<experiment>.json``. Nothing between the markers is
typed by hand; a test (``tests/test_results_tables.py``) fails when a block differs from
what its file gives, so a figure in the docs is always the one a script wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_tables beside this file
import results_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BLOCK = re.compile(r"(<!-- results (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold generated blocks."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(name: str, results: Path = RESULTS) -> str:
    """The Markdown of block ``name`` (``experiment.table``) from its results file.

    Raises
    ------
    ValueError
        When the name has no table function or its results file is missing.
    """
    experiment, _, table = name.partition(".")
    function = results_tables.table_function(experiment, table)
    if function is None:
        raise ValueError(f"no table {name!r} (define {experiment}__{table} in a module of results_tables)")
    path = results / f"{experiment}.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (run the script that writes it)")
    body = function(json.loads(path.read_text(encoding="utf-8")))
    return body if body.endswith("\n") else body + "\n"


def render_document(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block replaced by what its results file gives."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), results) + m.group(4), text)


def stale_blocks(path: Path, results: Path = RESULTS) -> list[str]:
    """The names of the blocks of ``path`` that differ from their results files."""
    text = path.read_text(encoding="utf-8")
    return [
        m.group("name") for m in BLOCK.finditer(text) if m.group("body") != render(m.group("name"), results)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    args = parser.parse_args()
    stale = []
    for path in documents():
        if not path.is_file():
            continue
        names = stale_blocks(path)
        if not names:
            continue
        stale += [f"{path.relative_to(ROOT)}: {name}" for name in names]
        if not args.check:
            path.write_text(render_document(path.read_text(encoding="utf-8")), encoding="utf-8")
    for line in stale:
        print(("stale " if args.check else "rewrote ") + line)
    if args.check and stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
