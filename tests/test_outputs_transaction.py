"""A slide's outputs are one transaction, and a rerun knows the settings that made them (issue 16, 1-2).

A failure while writing (an exception, Ctrl-C, a full disk) leaves the previous set byte for
byte and no temporary; ``--overwrite`` replaces the old set only once the new one is whole;
a rerun with other settings is refused with the differences, unless overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import write_pyramid

from napari_care.core import atomic, outputs
from napari_care.core.atomic import OutputError, output_set
from napari_care.core.features import SETTINGS_ATTRIBUTE, load_features
from napari_care.core.jobs import UNCHECKED, SlideJob, extract_job, segment_job
from napari_care.core.mixmag_features import mixmag_job
from napari_care.core.outputs import SETTINGS_KEY, recorded_settings
from napari_care.core.segment import SegmentOptions

OPTIONS = SegmentOptions(min_tissue=0.0, tile_size_px=64, k=4)
OTHER = SegmentOptions(min_tissue=0.0, tile_size_px=32, k=3)
SEGMENT_FILES = (
    "tx.care.json",
    "tx.care.npz",
    "tx.features.h5",
    "tx.measurements.csv",
    "tx.regions.geojson",
    "tx.slide_features.h5",
)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> SlideJob:
    # 1024 x 1024 px without a calibration (0.5 um/px given): 256 tiles of 64 px at 20x
    folder = tmp_path_factory.mktemp("transaction_slide")
    pyramid = write_pyramid(folder / "tx.tif", shape=(1024, 1024), level_count=2, tile_shape=(256, 256))
    return SlideJob(pyramid.path, 0.5)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder (temporaries included) and its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def half_then(error: BaseException):
    """A writer that writes half a file to its target, then raises ``error``."""

    def write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise error

    return write


@pytest.fixture(scope="module")
def finished(job, tmp_path_factory) -> dict[str, bytes]:
    """A folder where the slide is done with OPTIONS; the tests copy it."""
    out = tmp_path_factory.mktemp("finished")
    assert segment_job(job, out, OPTIONS)["status"] == "done"
    return snapshot(out)


@pytest.fixture
def out(tmp_path, finished) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in finished.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("writer", ["save_features", "write_geojson", "summary"])
@pytest.mark.parametrize("error", ["exception", "enospc"])
def test_a_failed_overwrite_keeps_the_previous_set(job, out, monkeypatch, writer, error):
    before = snapshot(out)
    target = {"save_features": "tx.features.h5", "write_geojson": "tx.regions.geojson"}.get(
        writer, "tx.care.json"
    )
    raised = RuntimeError("boom") if error == "exception" else enospc(out / ".tmp")
    if writer == "summary":  # the marker, written last: its JSON fails half way
        monkeypatch.setattr(outputs, "json", SimpleNamespace(dump=half_then_handle(raised)))
    else:
        monkeypatch.setattr(outputs, writer, half_then(raised))

    row = segment_job(job, out, OTHER, overwrite=True)

    assert row["status"] == "failed"
    assert snapshot(out) == before  # byte for byte, and no temporary left
    if error == "enospc":
        assert row["detail"] == f"tx.tif: no space left on device while writing {out / target}"
    else:
        assert row["detail"] == "RuntimeError: boom"


def half_then_handle(error: BaseException):
    def dump(document, handle, **kwargs):
        handle.write('{"half": ')
        raise error

    return dump


def test_ctrl_c_while_writing_keeps_the_previous_set(job, out, monkeypatch):
    before = snapshot(out)
    monkeypatch.setattr(outputs, "write_geojson", half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        segment_job(job, out, OTHER, overwrite=True)
    assert snapshot(out) == before


def test_a_move_that_fails_puts_the_old_files_back(tmp_path, monkeypatch):
    old = {name: f"old {name}".encode() for name in ("a.h5", "b.geojson", "c.json")}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    real_replace, moves = os.replace, []

    def replace(source, target):
        moves.append(Path(target).name)
        if moves.count("c.json") == 1 and Path(target).name == "c.json":  # the new marker's move
            raise enospc(target)
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OutputError, match=r"^slide\.svs: no space left on device while writing .*c\.json$"):
        with output_set("slide.svs") as files:
            for name in old:
                files.temporary(tmp_path / name).write_bytes(b"new")
    assert snapshot(tmp_path) == old
    assert moves[-1] == "c.json"  # the old marker came back last


def test_an_output_set_writes_all_or_nothing(tmp_path):
    with output_set("s") as files:
        first = files.temporary(tmp_path / "a.txt")
        first.write_text("a")
        assert first.name.startswith(".a.txt.") and first.name.endswith(".part")
        assert not (tmp_path / "a.txt").exists()  # not before the end
        with atomic.atomic_open(files.temporary(tmp_path / "b.txt"), "w") as handle:  # written in place
            handle.write("b")
    assert snapshot(tmp_path) == {"a.txt": b"a", "b.txt": b"b"}
    with pytest.raises(ValueError, match="twice"), output_set() as files:
        files.temporary(tmp_path / "c.txt")
        raise ValueError("twice")
    assert snapshot(tmp_path) == {"a.txt": b"a", "b.txt": b"b"}


def test_a_rerun_with_other_settings_is_refused_then_redone(job, out):
    assert recorded_settings(out / "tx.care.json")["tile_size_px"] == 64
    assert segment_job(job, out, OPTIONS) | {"seconds": 0} == {
        "slide": str(job.path),
        "status": "skipped",
        "seconds": 0,
        "detail": "already done",
    }
    before = snapshot(out)
    row = segment_job(job, out, OTHER)
    assert row["status"] == "failed"
    assert row["detail"] == (
        "settings differ from the existing outputs: tile_size_px 64 -> 32, k 4 -> 3; use --overwrite to redo"
    )
    assert snapshot(out) == before
    assert segment_job(job, out, OTHER, overwrite=True)["status"] == "done"
    assert recorded_settings(out / "tx.care.json")["k"] == 3
    assert recorded_settings(out / "tx.features.h5")["tile_size_px"] == 32  # the features say it too
    assert segment_job(job, out, OTHER)["detail"] == "already done"


def test_outputs_from_before_settings_were_recorded_are_skipped_unchecked(job, out):
    summary = json.loads((out / "tx.care.json").read_text())
    del summary[SETTINGS_KEY]
    (out / "tx.care.json").write_text(json.dumps(summary))
    row = segment_job(job, out, OTHER)
    assert (row["status"], row["detail"]) == ("skipped", UNCHECKED)


def test_extract_agrees(job, tmp_path, monkeypatch):
    out = tmp_path / "extract"
    assert extract_job(job, out, OPTIONS)["status"] == "done"
    features = out / "tx.features.h5"
    assert recorded_settings(features)["tile_size_px"] == 64 and "k" not in recorded_settings(features)
    assert extract_job(job, out, OPTIONS)["detail"] == "already done"
    before = snapshot(out)
    row = extract_job(job, out, OTHER)
    assert (row["status"], row["detail"]) == (
        "failed",
        "settings differ from the existing outputs: tile_size_px 64 -> 32; use --overwrite to redo",
    )
    from napari_care.core import jobs

    monkeypatch.setattr(jobs, "save_features", half_then(enospc(features)))
    row = extract_job(job, out, OTHER, overwrite=True)
    assert row["detail"] == f"tx.tif: no space left on device while writing {features}"
    assert snapshot(out) == before
    monkeypatch.undo()
    assert extract_job(job, out, OTHER, overwrite=True)["status"] == "done"
    assert load_features(features).patch_size_px == 32

    # a features file of segment (more settings) resumes an extract of the same settings
    assert segment_job(job, out, OTHER, overwrite=True)["status"] == "done"
    assert extract_job(job, out, OTHER)["detail"] == "already done"

    import h5py

    with h5py.File(features, "a") as f:  # a file from before settings were recorded
        del f.attrs[SETTINGS_ATTRIBUTE]
    assert extract_job(job, out, OPTIONS)["detail"] == UNCHECKED


def test_mixmag_agrees(job, tmp_path):
    options = SegmentOptions(min_tissue=0.0)
    assert mixmag_job(job, tmp_path, options)["status"] == "done"
    row = mixmag_job(job, tmp_path, SegmentOptions(min_tissue=0.5))
    assert row["status"] == "failed" and "min_tissue 0.0 -> 0.5" in row["detail"]


def test_cli_refuses_other_settings_with_exit_1(job, out):
    from napari_care.cli.app import main

    args = ["segment", str(job.path), "--mpp", "0.5", "--out", str(out), "--quiet", "--min-tissue", "0"]
    same = CliRunner().invoke(main, [*args, "--tile-size", "64", "--k", "4"])
    assert same.exit_code == 0, same.output
    assert "already done" in same.stdout
    other = CliRunner().invoke(main, [*args, "--tile-size", "32", "--k", "4"])
    assert other.exit_code == 1, other.output
    assert "tile_size_px 64 -> 32; use --overwrite to redo" in other.stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root on Linux only; skipped elsewhere)."""
    point = tmp_path / "disk"
    point.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root on Linux")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave_bytes`` of free space."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * max(0, free - leave_bytes))
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("leave_kib", [0, 16, 48, 80])
def test_a_full_disk_through_segment_job(job, small_disk, leave_kib):
    out = small_disk / "out"
    assert segment_job(job, out, OPTIONS)["status"] == "done"
    before = snapshot(out)
    filler = fill(small_disk, leave_kib * 1024)

    row = segment_job(job, out, OTHER, overwrite=True)

    assert row["status"] == "failed"
    assert row["detail"].startswith("tx.tif: no space left on device while writing ")
    assert Path(row["detail"].rsplit(" ", 1)[1]).name in SEGMENT_FILES
    assert snapshot(out) == before
    filler.unlink()
    assert segment_job(job, out, OTHER, overwrite=True)["status"] == "done"
    assert sorted(p.name for p in out.iterdir()) == sorted(SEGMENT_FILES)


def test_hdf5_on_a_full_disk_fails_cleanly_wherever_the_space_ends(small_disk):
    # HDF5 once crashed the process when the disk filled while it flushed its metadata on close
    import numpy as np

    from napari_care.core.features import PatchFeatures, save_features

    pf = PatchFeatures(np.ones((300, 96), np.float32), np.zeros((300, 2)), 224, 448.0, 0.5, "e", "s")
    outcomes = set()
    for leave_kib in range(0, 160, 12):
        filler = fill(small_disk, leave_kib * 1024)
        try:
            save_features(small_disk / "s.features.h5", pf)
            outcomes.add("written")
            assert len(load_features(small_disk / "s.features.h5")) == 300
            (small_disk / "s.features.h5").unlink()
        except OSError as error:
            outcomes.add("full")
            assert error.errno == errno.ENOSPC and str(small_disk / "s.features.h5") in str(error)
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
        filler.unlink()
    assert outcomes == {"written", "full"}
