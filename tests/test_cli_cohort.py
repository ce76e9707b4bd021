"""``napari-care segment`` / ``extract`` over many slides: local cluster, in-process, resume, exit codes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cohort import worker_processes, write_cohort_slides

from napari_care.cli.app import main
from napari_care.core import cohort
from napari_care.core.features import load_features


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return write_cohort_slides(tmp_path_factory.getbasetemp() / "cohort_slides")


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def summary_rows(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        return {Path(row["slide"]).name: row["status"] for row in csv.DictReader(handle)}


def test_extract_on_a_local_cluster(slides, tmp_path):
    result = invoke(
        "extract", slides / "good1.ome.tif", slides / "broken.svs", "--out", tmp_path, "--workers", "2"
    )
    assert result.exit_code == 1, result.output
    assert re.search(r"2 slides on 2 dask workers; dashboard: http://\S+/status", result.stderr)
    assert "slides:" in result.stderr  # the progress bar
    assert re.search(r"broken\.svs +failed", result.stdout)
    assert "1 done, 0 skipped, 1 failed" in result.stdout
    assert summary_rows(tmp_path / "extract-summary.csv") == {"good1.ome.tif": "done", "broken.svs": "failed"}
    assert len(load_features(tmp_path / "good1.features.h5")) > 10
    assert not worker_processes()


def test_one_slide_runs_in_process_and_a_rerun_skips_it(slides, tmp_path):
    result = invoke("segment", slides / "good1.ome.tif", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "dask" not in result.output
    assert "slides:" in result.stderr and "extract:" in result.stderr  # bars over slides and over tiles
    assert re.search(r"good1\.ome\.tif +done", result.stdout)
    again = invoke("segment", slides / "good1.ome.tif", "--out", tmp_path, "--quiet")
    assert again.exit_code == 0
    assert re.search(r"good1\.ome\.tif +skipped .*already done", again.stdout)


def test_extract_from_a_csv_with_per_slide_mpp(slides, tmp_path):
    listing = tmp_path / "slides.csv"
    listing.write_text(f"path,mpp\nnompp.tif,0.5\n{slides / 'good2.ome.tif'},\n{slides / 'broken.svs'},\n")
    (tmp_path / "nompp.tif").symlink_to(slides / "nompp.tif")  # relative paths are the CSV's folder's
    result = invoke("extract", listing, "--out", tmp_path / "out", "--workers", "0", "--quiet")
    assert result.exit_code == 1, result.output
    assert summary_rows(tmp_path / "out" / "extract-summary.csv") == {
        "nompp.tif": "done",
        "good2.ome.tif": "done",
        "broken.svs": "failed",
    }
    assert len(load_features(tmp_path / "out" / "nompp.features.h5")) > 10


def test_extract_mixmag(slides, tmp_path):
    result = invoke("extract", "--mixmag", slides / "good1.ome.tif", "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "good1.mixmag.h5").is_file() and not (tmp_path / "good1.features.h5").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "{slides}/nowhere*.svs"], "no file matches"),
        (["segment", "{slides}/good1.ome.tif", "--workers", "-1"], "-1"),
        (["extract", "{slides}/good1.ome.tif", "--threads-per-worker", "0"], "0"),
        (
            ["segment", "{slides}/good1.ome.tif", "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"],
            "--scheduler",
        ),
        (["extract", "{slides}/good1.ome.tif", "{tmp}/good1.ome.tif"], "share the name 'good1'"),
        (["extract", "{tmp}/list.csv"], "'path' column"),
        (["segment", "{slides}/good1.ome.tif", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach"),
    ],
)
def test_bad_arguments_exit_2(slides, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(cohort, "CONNECT_TIMEOUT_S", 1)
    (tmp_path / "good1.ome.tif").write_bytes(b"")
    (tmp_path / "list.csv").write_text("slide\nx.svs\n")
    args = [arg.format(slides=slides, tmp=tmp_path) for arg in args]
    result = invoke(*args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", ["info", "extract", "segment", "demo", "pretrain", "train-mil", "evaluate"]
)
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert "--help" in result.stdout
