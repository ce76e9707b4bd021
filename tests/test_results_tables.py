"""The docs' generated result tables are what the results files say (benchmarks/make_tables.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import make_tables  # noqa: E402 (benchmarks/ is not a package)


@pytest.mark.parametrize("path", make_tables.documents(), ids=lambda p: p.name)
def test_every_generated_block_matches_its_results_file(path):
    if not path.is_file():
        pytest.skip(f"{path.name} is not there")
    assert make_tables.stale_blocks(path) == [], (
        f"{path.name}: tables out of date with docs/results/: run python benchmarks/make_tables.py"
    )


def test_every_results_file_says_which_commit_and_command_made_it():
    files = sorted(make_tables.RESULTS.glob("*.json"))
    assert files
    for path in files:
        result = json.loads(path.read_text())
        assert result.get("commit") and result.get("command"), f"{path.name} lacks its commit or command"


def test_a_changed_figure_makes_its_block_stale(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(make_tables.RESULTS, results)
    document = tmp_path / "doc.md"
    document.write_text("before\n<!-- results features_segment.summary -->\n<!-- /results -->\nafter\n")
    document.write_text(make_tables.render_document(document.read_text(), results))
    assert make_tables.stale_blocks(document, results) == []
    assert "before\n" in document.read_text() and document.read_text().endswith("after\n")
    figures = json.loads((results / "features_segment.json").read_text())
    figures["speedup_median"] *= 2
    (results / "features_segment.json").write_text(json.dumps(figures))
    assert make_tables.stale_blocks(document, results) == ["features_segment.summary"]


def test_an_unknown_table_or_a_missing_file_is_named():
    with pytest.raises(ValueError, match=r"no table 'features_segment\.nothing'"):
        make_tables.render("features_segment.nothing")
    with pytest.raises(ValueError, match="missing"):
        make_tables.render("cohort.summary", Path("/nonexistent"))
