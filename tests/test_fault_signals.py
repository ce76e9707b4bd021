"""Ctrl-C and SIGKILL while ``napari-care segment`` writes a slide's features or its GeoJSON (issue 16, 7).

A real ``segment`` subprocess runs with one writer of the output set
(``napari_care.core.outputs.save_features`` or ``write_geojson``) replaced, through a ``-c``
wrapper, by one that writes part of its temporary, says so in a file and sleeps: the signal
lands inside the write, every time. Afterwards a first run has left no file of the slide but
the temporaries a rerun clears (after SIGKILL), an ``--overwrite`` run has left the previous set
byte for byte, Ctrl-C ends with one line and no traceback, and the rerun succeeds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_pyramid

from napari_care.cli.app import main
from napari_care.core.outputs import recorded_settings

pytestmark = [
    pytest.mark.slow,  # a subprocess each (2-4 s); deselect with -m 'not slow'
    pytest.mark.skipif(
        sys.platform == "win32" or not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"
    ),
]

STAGES = {"features": "save_features", "geojson": "write_geojson"}
SET = [
    "tx.care.json",
    "tx.care.npz",
    "tx.features.h5",
    "tx.measurements.csv",
    "tx.regions.geojson",
    "tx.slide_features.h5",
]
SUMMARY = "segment-summary.csv"
TEMPORARY = re.compile(r"^\.tx\.(features\.h5|regions\.geojson)\.[^.]{8}\.part$")
READY_TIMEOUT_S = 120.0  # start-up and tiling on a loaded 2-core machine; it takes 2-4 s

# napari-care with one writer paused inside its file: half a file written, then a long sleep.
PAUSED_CLI = """\
import os, sys, time
from pathlib import Path
from napari_care.core import outputs
stage, ready = os.environ["PAUSE_STAGE"], Path(os.environ["PAUSE_READY"])
def paused(path, *args, **kwargs):
    Path(path).write_bytes(b"half a file")
    ready.write_text(str(path))
    time.sleep(600)
setattr(outputs, stage, paused)
from napari_care.cli.app import main
sys.argv[0] = "napari-care"
main()
"""


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    # 1024 x 1024 px at 0.5 um/px: 5 x 5 tiles of 224 px at 20x
    folder = tmp_path_factory.mktemp("signal_slide")
    pyramid = write_pyramid(
        folder / "tx.tif",
        shape=(1024, 1024),
        tile_shape=(256, 256),
        level_count=2,
        resolution=(20000.0, "centimeter"),
    )
    return pyramid.path


def segment_args(slide: Path, out: Path, *options: str) -> list[str]:
    return ["segment", str(slide), "--out", str(out), "--quiet", "--min-tissue", "0", *options]


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished(slide, tmp_path_factory) -> dict[str, bytes]:
    """The files of the slide done with the defaults (the summary CSV left out)."""
    out = tmp_path_factory.mktemp("finished")
    done = CliRunner().invoke(main, segment_args(slide, out))
    assert done.exit_code == 0, done.output
    return {name: data for name, data in files(out).items() if name != SUMMARY}


def stopped_while_writing(
    stage: str, deliver: signal.Signals, args: list[str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``napari-care ARGS`` paused in ``stage``'s write, deliver ``deliver``, wait for the end.

    Returns the finished process and the temporary it was writing when the signal came.
    """
    ready = tmp_path / "ready"
    env = os.environ | {"PAUSE_STAGE": STAGES[stage], "PAUSE_READY": str(ready)}
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CLI, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), f"the run never reached the {stage} write: {process.poll()}"
        time.sleep(0.05)  # the path is written; let the writer reach its sleep
        process.send_signal(deliver)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, Path(ready.read_text())


def check_the_ending(done: subprocess.CompletedProcess, deliver: signal.Signals) -> None:
    """Ctrl-C: exit 1 (or 130), one line saying so, no traceback. SIGKILL: killed."""
    if deliver == signal.SIGKILL:
        assert done.returncode == -signal.SIGKILL
        return
    assert done.returncode in (1, 130), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("napari-care: interrupted after 0 of 1 slides"), lines


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("deliver", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_first_run_stopped_while_writing_leaves_only_what_the_rerun_clears(slide, tmp_path, stage, deliver):
    out = tmp_path / "out"
    done, temporary = stopped_while_writing(stage, deliver, segment_args(slide, out), tmp_path)

    check_the_ending(done, deliver)
    assert temporary.parent == out and TEMPORARY.match(temporary.name)
    left = set(files(out)) - {SUMMARY}
    if deliver == signal.SIGINT:
        assert left == set()  # the temporaries went with the set
        assert (out / SUMMARY).read_text().strip() == "slide,status,seconds,detail"
    else:
        assert temporary.name in left and all(TEMPORARY.match(name) for name in left)

    rerun = CliRunner().invoke(main, segment_args(slide, out))
    assert rerun.exit_code == 0, rerun.output
    assert sorted(files(out)) == sorted([*SET, SUMMARY])  # leftovers cleared, the set whole


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("deliver", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_overwrite_stopped_while_writing_keeps_the_previous_set(slide, finished, tmp_path, stage, deliver):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished.items():
        (out / name).write_bytes(data)
    args = segment_args(slide, out, "--overwrite", "--k", "4")
    done, temporary = stopped_while_writing(stage, deliver, args, tmp_path)

    check_the_ending(done, deliver)
    now = files(out)
    assert {name: now.get(name) for name in finished} == finished  # byte for byte
    others = set(now) - set(finished) - {SUMMARY}
    if deliver == signal.SIGINT:
        assert others == set()
    else:  # the kill leaves its temporaries, nothing else
        assert temporary.name in others and all(TEMPORARY.match(name) for name in others)

    rerun = CliRunner().invoke(main, args)
    assert rerun.exit_code == 0, rerun.output
    assert sorted(files(out)) == sorted([*SET, SUMMARY])
    assert recorded_settings(out / "tx.care.json")["k"] == 4
