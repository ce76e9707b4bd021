"""``napari-care segment --features``, ``--layout trident``, ``--device`` and the encoder's tile size.

The slide is the small generated one of conftest (about a hundred tissue tiles at 20x): the
features ``extract --layout trident`` writes are segmented without the slide and must give the
regions of ``segment`` on the slide.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from napari_care.cli.app import main


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def summary(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, newline="") as handle:
        return {Path(row["slide"]).name: (row["status"], row["detail"]) for row in csv.DictReader(handle)}


def regions_of(care_json: Path) -> tuple[int, list]:
    document = json.loads(care_json.read_text())
    table = [{k: v for k, v in row.items() if k != "area_um2"} for row in document["regions"]]
    return document["roi"], table


@pytest.fixture(scope="module")
def extracted(widget_slide_path, tmp_path_factory) -> Path:
    """A TRIDENT job folder of the small slide, written by ``extract --layout trident``."""
    job = tmp_path_factory.mktemp("trident_job")
    result = invoke("extract", widget_slide_path, "--layout", "trident", "--out", job, "--quiet")
    assert result.exit_code == 0, result.output
    return job


def test_extract_layout_trident_writes_features_of_the_encoder(extracted):
    assert sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*.h5")) == [
        "features_default/small.h5"
    ]
    assert summary(extracted / "extract-summary.csv")["small.ome.tif"][0] == "done"


def test_segment_features_of_a_trident_folder_gives_the_regions_of_the_slide(
    widget_slide_path, extracted, tmp_path
):
    direct = invoke("segment", widget_slide_path, "--out", tmp_path / "direct", "--quiet")
    assert direct.exit_code == 0, direct.output
    assert (tmp_path / "direct" / "small.slide_features.h5").is_file()

    result = invoke("segment", "--features", extracted, "--out", tmp_path / "from_features", "--quiet")
    assert result.exit_code == 0, result.output
    assert re.search(r"small\.h5 +done .*from the file", result.stdout)
    out = tmp_path / "from_features"
    assert sorted(p.name for p in out.iterdir()) == [
        "segment-summary.csv",
        "small.care.json",
        "small.care.npz",
        "small.measurements.csv",
        "small.regions.geojson",
        "small.slide_features.h5",
    ]
    assert regions_of(out / "small.care.json") == regions_of(tmp_path / "direct" / "small.care.json")
    with (
        h5py.File(out / "small.slide_features.h5") as a,
        h5py.File(tmp_path / "direct" / "small.slide_features.h5") as b,
    ):
        np.testing.assert_allclose(np.asarray(a["features"][()]), np.asarray(b["features"][()]))
    again = invoke("segment", "--features", extracted, "--out", out, "--quiet")
    assert again.exit_code == 0 and re.search(r"small\.h5 +skipped .*already done", again.stdout)


def test_segment_features_with_the_slide_records_it(widget_slide_path, extracted, tmp_path):
    result = invoke(
        "segment", "--features", extracted, "--slide", widget_slide_path, "--out", tmp_path, "--quiet"
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "small.care.json").read_text())
    assert document["slide"]["path"] == str(widget_slide_path)
    assert document["slide"]["dimensions"] == [4096, 3072]
    assert document["settings"]["slide"] == "small.ome.tif"


def test_an_empty_feature_file_is_a_skipped_row_and_the_run_exits_0(extracted, tmp_path):
    job = tmp_path / "job"
    (job / "features_default").mkdir(parents=True)
    (job / "features_default" / "small.h5").symlink_to(extracted / "features_default" / "small.h5")
    with h5py.File(job / "features_default" / "empty.h5", "w") as f:  # TRIDENT on a slide without tissue
        f.create_dataset("features", data=np.zeros((0, 16), np.float32))
        f.create_dataset("coords", data=np.zeros((0, 2), np.int64))
        f["coords"].attrs.update({"patch_size": 224, "patch_size_level0": 224})
    result = invoke("segment", "--features", job, "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    rows = summary(tmp_path / "out" / "segment-summary.csv")
    assert rows["empty.h5"] == ("skipped", "no tissue patches in the feature file")
    assert rows["small.h5"][0] == "done"
    assert "1 done, 1 skipped, 0 failed" in result.stdout


def test_a_clam_file_takes_the_patch_size(extracted, tmp_path):
    clam = tmp_path / "clam" / "h5_files"
    clam.mkdir(parents=True)
    with (
        h5py.File(extracted / "features_default" / "small.h5") as source,
        h5py.File(clam / "small.h5", "w") as f,
    ):
        f.create_dataset("features", data=source["features"][()])
        f.create_dataset("coords", data=source["coords"][()])  # CLAM without attributes
    result = invoke(
        "segment", "--features", tmp_path / "clam", "--patch-size", "224", "--out", tmp_path / "out"
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "small.care.json").read_text())["patch_size_level0"] == 224


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile-size", "256"], "--tile-size: an option of the extraction"),
        (["--magnification", "10", "--strict"], "--magnification, --strict: an option of the extraction"),
        (["--layout", "trident"], "--layout: an option of the extraction"),
        (["{slide}"], "give SLIDES or --features, not both"),
        (["--k", "0"], "--k 0: must be between 1 and 256"),
        (["--patch-size", "0"], "--patch-size 0: must be at least 1"),
    ],
)
def test_features_refuse_what_only_an_extraction_uses(widget_slide_path, extracted, tmp_path, args, message):
    args = [a.format(slide=widget_slide_path) for a in args]
    result = invoke("segment", "--features", extracted, *args, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "segment-summary.csv").exists()


def test_the_options_of_features_go_with_features_only(widget_slide_path, tmp_path):
    result = invoke("segment", widget_slide_path, "--patch-size", "224", "--out", tmp_path)
    assert result.exit_code == 2 and "--patch-size goes with --features" in result.stderr
    result = invoke("segment", "--out", tmp_path)
    assert result.exit_code == 2 and "no slides to process" in result.stderr
    result = invoke("segment", "--features", tmp_path, "--out", tmp_path / "out")  # a folder without features
    assert result.exit_code == 2 and str(tmp_path) in result.stderr


def test_the_encoder_preset_sets_the_tile_size(widget_slide_path, tmp_path):
    result = invoke(
        "segment", widget_slide_path, "--encoder", "conch_v1_5", "--max-tiles", "1", "--out", tmp_path
    )
    assert result.exit_code == 2 and "--tile-size 512 at 20x" in result.stderr  # refused before any network
    result = invoke("extract", widget_slide_path, "--max-tiles", "1", "--out", tmp_path)
    assert result.exit_code == 2 and "--tile-size 224 at 20x" in result.stderr  # the default, as before
    result = invoke("segment", "--help")
    assert "512 for conch_v1_5" in result.output and "cuda, mps or cpu" in result.output


def test_device_is_checked_before_any_work(widget_slide_path, tmp_path):
    result = invoke("extract", widget_slide_path, "--device", "tpu", "--out", tmp_path)
    assert result.exit_code == 2 and "--device:" in result.stderr and "Traceback" not in result.output
    result = invoke("extract", widget_slide_path, "--device", "cpu", "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output


def test_mixmag_has_one_layout(widget_slide_path, tmp_path):
    result = invoke("extract", widget_slide_path, "--mixmag", "--layout", "trident", "--out", tmp_path)
    assert result.exit_code == 2 and "--layout trident" in result.stderr
