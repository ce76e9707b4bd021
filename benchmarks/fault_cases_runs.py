"""The fault cases of runs: options out of range, output folders (read-only, full, earlier results),
a cohort with a bad slide and signals while writing (registered in :data:`fault_lab.CASES`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_lab, beside this script

from fault_lab import (
    Lab,
    Row,
    case,
    files_note,
    judge,
    not_here,
    partial_files,
    row,
    segment,
    snapshot,
    summary_detail,
    summary_rows,
    unique_problems,
)

# -- options out of range -----------------------------------------------------------------------


def refused_option(
    lab: Lab, name: str, options: list[str], words: list[str], slide: Path | None = None
) -> Row:
    out = lab.root / name / "out"
    run = segment(lab, slide or lab.slide(), out, *options)
    problems = judge(run, exit_codes=(2,), mentions=words, where=run.stderr, absent=[out])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if run.returncode == 2 and len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, not one")
    return row(lab, run, problems, files_note(out), summary_detail(out))


OPTION_CASES = {
    "tile-size-1": (["--tile-size", "1"], ["--tile-size", "16"]),
    "tile-size-100000": (["--tile-size", "100000"], ["--tile-size", "4096"]),
    "magnification-1000": (["--magnification", "1000"], ["--magnification", "upsampling", "20"]),
    "magnification-0.01": (["--magnification", "0.01"], ["--magnification"]),
    "k-1000000": (["--k", "1000000"], ["--k", "256"]),
    "groups-1000000": (["--groups", "1000000"], ["--groups", "64"]),
    "k-zero": (["--k", "0"], ["--k 0"]),
    "mpp-zero": (["--mpp", "0"], ["--mpp", "0.01"]),
    "max-tiles": (["--max-tiles", "10"], ["slide.ome.tif", "tiles", "--max-tiles"]),
}


def _option_case(name: str, options: list[str], words: list[str]) -> None:
    @case(name, f"segment {' '.join(options)}")
    def run_case(lab: Lab) -> Row:
        return refused_option(lab, name, options, words)


for _name, (_options, _words) in OPTION_CASES.items():
    _option_case(_name, _options, _words)


@case("mpp-on-calibrated", "--mpp 0.25 on a slide calibrated at 0.5 um/px, no --force-mpp")
def mpp_on_calibrated(lab: Lab) -> Row:
    out = lab.path("mppcal/out")
    run = segment(lab, lab.slide(), out, "--mpp", "0.25")
    problems = judge(run, exit_codes=(0,), mentions=["0.5", "--force-mpp"], where=run.stderr, folder=out)
    summary = out / "slide.care.json"
    note = ""
    if summary.is_file():
        used = json.loads(summary.read_text("utf-8"))["slide"]["mpp"]
        note = f"mpp used: {used}; {summary_detail(out)}"
        if not used or abs(used[0] - 0.5) > 1e-3:
            problems.append(f"the file's 0.5 um/px was overridden ({used})")
    return row(lab, run, problems, files_note(out, slide_files="slide"), note)


@case("mpp-on-calibrated-real", "--mpp 0.25 on CMU-1-Small-Region.svs (0.499 um/px), no --force-mpp")
def mpp_on_calibrated_real(lab: Lab) -> Row:
    slide = lab.shared("slides/CMU-1-Small-Region.svs")
    if slide is None:
        return not_here("no ../shared/data/slides/CMU-1-Small-Region.svs")
    out = lab.path("mppreal/out")
    run = segment(lab, slide, out, "--mpp", "0.25")
    problems = judge(run, exit_codes=(0,), mentions=["0.499", "--force-mpp"], where=run.stderr, folder=out)
    summary = out / "CMU-1-Small-Region.care.json"
    note = ""
    if summary.is_file():
        document = json.loads(summary.read_text("utf-8"))
        note = f"mpp used: {document['slide']['mpp']}, {document['patches']} patches"
        if abs(document["slide"]["mpp"][0] - 0.499) > 1e-3:
            problems.append("the file's 0.499 um/px was overridden")
    return row(lab, run, problems, files_note(out, slide_files="CMU-1-Small-Region"), note)


# -- output folders -----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(point: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs at ``point`` with ``options``; yields whether it could (root on Linux only)."""
    point.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        yield False
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


@case("read-only-out", "--out on a read-only file system")
def read_only_out(lab: Lab) -> Row:
    point = lab.path("readonly/disk")
    with tmpfs(point, "ro,size=1m") as mounted:
        if not mounted:
            return not_here("mounting a read-only tmpfs needs root on Linux")
        out = point / "out"
        run = segment(lab, lab.slide(), out)
        problems = judge(run, exit_codes=(2,), mentions=[str(out), "writ"], where=run.stderr, absent=[out])
        started_work = "done" in run.stdout or "slide.ome.tif" in run.stdout
        if started_work:
            problems.append("the slide was computed before the folder was found read-only")
        return row(lab, run, problems, files_note(out))


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill ``folder``'s file system up to ``leave_bytes`` of free space."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
    return filler


@case("full-disk-overwrite", "--overwrite --k 4 on a full disk (2 MiB tmpfs) holding a finished set")
def full_disk_overwrite(lab: Lab) -> Row:
    point = lab.path("fulldisk/disk")
    with tmpfs(point, "size=2m") as mounted:
        if not mounted:
            return not_here("mounting a small tmpfs needs root on Linux")
        out = point / "out"
        out.mkdir()
        for path in lab.finished().glob("slide.*"):
            (out / path.name).write_bytes(path.read_bytes())
        before = snapshot(out)
        fill(point, 16 * 1024)
        run = segment(lab, lab.slide(), out, "--overwrite", "--k", "4")
        detail = summary_detail(out)
        problems = judge(
            run, exit_codes=(1, 2), mentions=["no space left on device"], folder=out, kept=before
        )
        return row(lab, run, problems, files_note(out, kept=before), detail)


@case("full-disk-first", "a first run into a full disk (2 MiB tmpfs)")
def full_disk_first(lab: Lab) -> Row:
    point = lab.path("fulldisk1/disk")
    with tmpfs(point, "size=2m") as mounted:
        if not mounted:
            return not_here("mounting a small tmpfs needs root on Linux")
        out = point / "out"
        out.mkdir()
        fill(point, 16 * 1024)
        run = segment(lab, lab.slide(), out)
        detail = summary_detail(out)
        problems = judge(run, exit_codes=(1, 2), mentions=["no space left on device"], folder=out)
        leftovers = sorted(p.name for p in out.glob("slide.*"))
        if leftovers:
            problems.append(f"files of the slide left: {', '.join(leftovers)}")
        return row(lab, run, problems, files_note(out, slide_files="slide"), detail)


@case("overwrite-bad-option", "--overwrite --k 0 over a finished set")
def overwrite_bad_option(lab: Lab) -> Row:
    out = lab.finished_copy("overbad/out")
    before = snapshot(out)
    run = segment(lab, lab.slide(), out, "--overwrite", "--k", "0")
    problems = judge(run, exit_codes=(2,), mentions=["--k 0"], where=run.stderr, folder=out, kept=before)
    return row(lab, run, problems, files_note(out, kept=before))


@case("overwrite-bad-checkpoint", "--overwrite --care of random bytes over a finished set")
def overwrite_bad_checkpoint(lab: Lab) -> Row:
    out = lab.finished_copy("overckpt/out")
    checkpoint = lab.path("overckpt/junk.pt")
    checkpoint.write_bytes(os.urandom(1024))
    before = snapshot(out)
    run = segment(lab, lab.slide(), out, "--overwrite", "--care", checkpoint)
    problems = judge(run, exit_codes=(2,), mentions=["junk.pt"], where=run.stderr, folder=out, kept=before)
    return row(lab, run, problems, files_note(out, kept=before))


@case("rerun-other-settings", "a rerun with --tile-size 256 --k 4 into a folder done with the defaults")
def rerun_other_settings(lab: Lab) -> Row:
    out = lab.finished_copy("rerun/out")
    before = snapshot(out)
    run = segment(lab, lab.slide(), out, "--tile-size", "256", "--k", "4")
    words = ["settings differ", "tile_size_px 224 -> 256", "k 8 -> 4", "--overwrite"]
    problems = judge(run, exit_codes=(1,), mentions=words, folder=out, kept=before)
    return row(lab, run, problems, files_note(out, kept=before), summary_detail(out))


@case("cohort-one-unreadable", "a cohort of two slides (local dask cluster), one of them not a slide")
def cohort_one_unreadable(lab: Lab) -> Row:
    good = lab.slide_copy("cohort/good.ome.tif")
    bad = lab.path("cohort/bad.svs")
    bad.write_text("not a slide\n" * 100)
    out = lab.path("cohort/out")
    run = lab.cli("segment", good, bad, "--out", out, "--quiet", "--workers", "1")
    rows = {Path(r["slide"]).name: r for r in summary_rows(out)}
    problems = judge(run, exit_codes=(1,), folder=out)
    if rows.get("good.ome.tif", {}).get("status") != "done":
        problems.append("the good slide is not done")
    bad_row = rows.get("bad.svs", {})
    if bad_row.get("status") != "failed" or not bad_row.get("detail"):
        problems.append("no failed row with a reason for bad.svs")
    noise = [
        w for w in ("KilledWorker", "memory", "worker") if w.lower() in bad_row.get("detail", "").lower()
    ]
    if noise:
        problems.append(f"the bad slide's row blames {', '.join(noise)}")
    return row(lab, run, problems, files_note(out, slide_files="good"), summary_detail(out))


# -- signals while writing ----------------------------------------------------------------------

SIGNAL_CASES = {
    f"{sig.name.lower()}-{stage_name}-{mode}": (sig, stage, mode)
    for sig in (signal.SIGINT, signal.SIGKILL)
    for stage_name, stage in (("features", "save_features"), ("geojson", "write_geojson"))
    for mode in ("first", "overwrite")
}


def signal_case(lab: Lab, name: str, deliver: signal.Signals, stage: str, mode: str) -> Row:
    """A run stopped by ``deliver`` inside the writer ``stage``; then the rerun of the same command."""
    if mode == "first":
        out = lab.path(f"{name}/out")
        before: dict[str, bytes] | None = None
        options: tuple[str, ...] = ()
    else:
        out = lab.finished_copy(f"{name}/out")
        before = snapshot(out)
        options = ("--overwrite", "--k", "4")
    args = ("segment", lab.slide(), "--out", out, "--quiet", *options)
    run, temporary = lab.cli_paused(stage, deliver, *args)
    problems = [] if temporary else ["the run never reached the writer"]
    if deliver == signal.SIGINT:
        problems += judge(run, exit_codes=(1, 130), mentions=["interrupted"], where=run.last_stderr_line)
        problems = unique_problems(problems + judge(run, exit_codes=(1, 130), folder=out, kept=before))
    elif run.returncode != -signal.SIGKILL:
        problems.append(f"exit {run.returncode} after SIGKILL")
    files = files_note(out, kept=before, slide_files="slide")
    left = partial_files(out)
    if mode == "first" and sorted(p.name for p in out.glob("slide.*")):
        problems.append(f"files of the slide left after {deliver.name}")
    if before is not None:
        lost = [n for n, data in before.items() if snapshot(out).get(n) != data]
        if lost:
            problems.append(f"earlier set changed: {', '.join(lost)}")
    again = lab.cli(*args)
    if again.returncode != 0 or partial_files(out) or again.traceback:
        problems.append(f"the rerun: exit {again.returncode}, partial {partial_files(out)}")
    rerun = f"the rerun: exit {again.returncode}, {summary_detail(out)}"
    cleared = "cleared by the rerun" if left and not partial_files(out) else "none left after the rerun"
    note = f"left by the signal: {len(left)} temporaries ({cleared}); {rerun}"
    return row(lab, run, unique_problems(problems), files, note)


def _signal_case(name: str, deliver: signal.Signals, stage: str, mode: str) -> None:
    what = f"{deliver.name} during the {stage.split('_')[-1]} write of a {mode} run"
    if mode == "overwrite":
        what += " (--overwrite --k 4 over a finished set)"

    @case(name, what)
    def run_case(lab: Lab) -> Row:
        return signal_case(lab, name, deliver, stage, mode)


for _name, (_signal, _stage, _mode) in SIGNAL_CASES.items():
    _signal_case(_name, _signal, _stage, _mode)
