"""``segment`` / ``extract`` check all they can before any slide is computed: exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cohort import write_cohort_slides

from napari_care.cli.app import main
from napari_care.core import jobs
from napari_care.core.features import load_features
from napari_care.core.segment import OPTION_LIMITS


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """good1.ome.tif: 2048 x 1536 px at 0.5 um/px (20x), no objective power in the file."""
    return write_cohort_slides(tmp_path_factory.getbasetemp() / "cohort_slides")


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder nobody may write into; as root (chmod does not stop root), a path under a file."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    (tmp_path / "a-file").write_bytes(b"")
    return tmp_path / "a-file" / "out"


@pytest.mark.parametrize("command", ["segment", "extract"])
def test_an_unwritable_output_folder_is_refused_before_any_slide(slides, tmp_path, command):
    out = unwritable_folder(tmp_path)
    try:
        result = invoke(command, slides / "good1.ome.tif", "--out", out, "--quiet")
        refused(result, "--out", out.name, "cannot write")
        assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob("*summary.csv"))
    finally:
        if out.is_dir():
            out.chmod(0o755)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "--k", "0"], "--k 0: must be between 1 and 256"),
        (["segment", "--k", "1000000"], "--k 1000000: must be between 1 and 256"),
        (["segment", "--groups", "1000000"], "--groups 1000000: must be between 2 and 64"),
        (["segment", "--groups", "1"], "--groups 1:"),
        (["extract", "--tile-size", "1"], "--tile-size 1: must be between 16 and 4096"),
        (["extract", "--tile-size", "100000"], "--tile-size 100000:"),
        (["extract", "--magnification", "0"], "--magnification 0.0: must be above 0"),
        (["extract", "--min-tissue", "1.5"], "--min-tissue 1.5: must be between 0 and 1"),
        (["extract", "--mpp", "0"], "mpp"),
        (["extract", "--max-tiles", "0"], "--max-tiles 0"),
        (["extract", "--force-mpp"], "--force-mpp needs --mpp"),
        (["extract", "--encoder", "no-such-encoder"], "unknown encoder 'no-such-encoder'"),
    ],
)
def test_options_out_of_range_are_refused_up_front(slides, tmp_path, args, message):
    command, *options = args
    result = invoke(command, slides / "good1.ome.tif", *options, "--out", tmp_path / "out", "--quiet")
    refused(result, message)
    assert not (tmp_path / "out").exists()


def test_the_help_says_the_limits_the_core_applies():
    text = " ".join(invoke("segment", "--help").stdout.split())
    assert f"{OPTION_LIMITS['k'][0]}-{OPTION_LIMITS['k'][1]}" in text
    assert f"{OPTION_LIMITS['n_groups'][0]}-{OPTION_LIMITS['n_groups'][1]}" in text
    assert f"{OPTION_LIMITS['tile_size_px'][0]}-{OPTION_LIMITS['tile_size_px'][1]}" in text
    for flag in ("--max-tiles", "--allow-upsampling", "--force-mpp"):
        assert flag in text


def test_a_magnification_above_the_scan_needs_allow_upsampling(slides, tmp_path):
    result = invoke("extract", slides / "good1.ome.tif", "--magnification", "80", "--out", tmp_path / "out")
    refused(result, "--magnification 80", "good1.ome.tif", "20x", "0.5 um/px", "--allow-upsampling")
    assert not (tmp_path / "out").exists()
    upsampling = ["--magnification", "80", "--allow-upsampling", "--max-tiles", "5"]
    allowed = invoke("extract", slides / "good1.ome.tif", *upsampling, "--out", tmp_path / "out")
    refused(allowed, "--max-tiles 5")  # past the magnification check; stopped by the tile count
    assert "upsampling" not in allowed.stderr


def test_a_tile_larger_than_the_slide_is_refused(slides, tmp_path):
    result = invoke("segment", slides / "good1.ome.tif", "--magnification", "0.01", "--out", tmp_path / "out")
    refused(result, "good1.ome.tif", "0.01x", "448,000 level-0 px", "--min-tissue", "--magnification")
    assert not (tmp_path / "out").exists()


def test_max_tiles_names_the_slide_and_the_count(slides, tmp_path):
    result = invoke("segment", slides / "good1.ome.tif", "--max-tiles", "69", "--out", tmp_path / "out")
    # 2048 x 1536 px at 0.5 um/px, 224 px tiles at 20x: 10 x 7 tiles
    refused(result, "good1.ome.tif", "70 tiles", "--max-tiles 69", "--tile-size 224")
    assert not (tmp_path / "out").exists()


def test_mpp_is_a_fallback_unless_forced(slides, tmp_path):
    ignored = invoke("extract", slides / "good1.ome.tif", "--mpp", "0.25", "--out", tmp_path / "a", "--quiet")
    assert ignored.exit_code == 0, ignored.output
    assert re.search(
        r"warning: good1\.ome\.tif: the file says 0\.5 um/px; --mpp 0\.25 .*--force-mpp", ignored.stderr
    )
    assert load_features(tmp_path / "a" / "good1.features.h5").mpp == pytest.approx(0.5)
    forcing = ["--mpp", "0.25", "--force-mpp", "--max-tiles", "19"]
    forced = invoke("extract", slides / "good1.ome.tif", *forcing, "--out", tmp_path / "b")
    refused(forced, "20 tiles", "0.25 um/px")  # 0.25 um/px: 448 level-0 px a tile, 5 x 4 tiles
    assert not (tmp_path / "b").exists()


def test_the_mpp_of_a_calibrated_real_slide_is_kept(shared_slide, tmp_path):
    slide = shared_slide("CMU-1-Small-Region.svs")  # 2220 x 2967 px, 0.499 um/px, 20x
    kept = invoke("extract", slide, "--mpp", "0.25", "--max-tiles", "1", "--out", tmp_path / "out")
    refused(kept, "140 tiles", "0.499 um/px", "--force-mpp")
    forced = invoke(
        "extract", slide, "--mpp", "0.25", "--force-mpp", "--max-tiles", "1", "--out", tmp_path / "out"
    )
    refused(forced, "35 tiles", "0.25 um/px")
    above = invoke("extract", slide, "--magnification", "1000", "--out", tmp_path / "out")
    refused(above, "--magnification 1000", "20x", "0.499 um/px", "upsampling")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_or_foreign_care_checkpoint_is_refused_before_extraction(slides, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{ not json")
    result = invoke("segment", slides / "good1.ome.tif", "--care", corrupt, "--out", tmp_path / "out")
    refused(result, "--care", "corrupt.json", "not JSON")
    foreign = tmp_path / "rna.json"
    foreign.write_text(
        json.dumps(
            {
                "format": "napari_care.checkpoint",
                "model_class": "napari_care.core.molecular.RNAEncoder",
                "config_class": "napari_care.core.molecular.RNAEncoderConfig",
                "config": {},
            }
        )
    )
    result = invoke("segment", slides / "good1.ome.tif", "--care", foreign, "--out", tmp_path / "out")
    refused(result, "rna.json", "not a CARE model")
    assert not (tmp_path / "out").exists()  # no features file, no summary


@pytest.mark.parametrize("command", ["segment", "extract", "info"])
def test_a_missing_slide_or_a_folder_exits_2(slides, tmp_path, command):
    out = [] if command == "info" else ["--out", tmp_path / "out"]
    missing = invoke(command, tmp_path / "nowhere.svs", *out)
    refused(missing, "nowhere.svs")
    folder = invoke(command, slides, *out)
    refused(folder, str(slides), "folder")
    assert not (tmp_path / "out").exists()


def test_a_missing_slide_in_a_cohort_exits_2_before_the_others_run(slides, tmp_path):
    result = invoke(
        "extract",
        slides / "good1.ome.tif",
        tmp_path / "gone.svs",
        "--out",
        tmp_path / "out",
        "--workers",
        "0",
    )
    refused(result, "gone.svs")
    assert not (tmp_path / "out").exists()


def test_a_summary_that_cannot_be_written_is_one_line_exit_1(slides, tmp_path, monkeypatch):
    (tmp_path / "good1.features.h5").write_bytes(b"")  # done before: skipped, nothing computed

    def refuse(rows, path):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(jobs, "write_summary", refuse)
    result = invoke("extract", slides / "good1.ome.tif", "--out", tmp_path, "--quiet")
    assert result.exit_code == 1, result.output
    assert "cannot write the summary" in result.stderr and "extract-summary.csv" in result.stderr
    assert "Traceback" not in result.output


def test_demo_refuses_k_0(tmp_path):
    refused(invoke("demo", "--k", "0", "--out", tmp_path / "demo"), "--k 0")
    assert not (tmp_path / "demo").exists()
