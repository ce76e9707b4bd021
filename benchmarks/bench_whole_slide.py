"""Whole slide end to end on the gigapixel slide: ``napari-care segment SLIDE --out DIR``, as a user runs it.

    python benchmarks/bench_whole_slide.py [--repeat 3] [--repeat-4x 2] [--no-4x] [--no-build]

Targets (issue 17, item 4): the whole run (tissue, tiles, the default encoder, CARE, the
outputs) under 30 s wall on this machine's 2 cores, peak resident memory under 2 GB, and
memory flat in the slide's size: the peak on a slide 4x larger (2x each side) at most 20%
above the 1x slide's.

Slides: the 100,000 x 80,000 px slide of ``make_gigapixel.py`` (1x) and its 200,000 x
160,000 px sibling (4x, built into the same folder when missing unless ``--no-build``).

Each repeat is a fresh ``napari-care segment SLIDE --out DIR`` process (a new output folder),
so import time and memory are the user's. Its wall time is measured from the start of the
process to its exit; its peak resident memory is the kernel's ``ru_maxrss`` of that child
(``os.wait4``), cross-checked by sampling the resident memory of the child and its children
every 50 ms (psutil), which also says in which stage the peak fell. The stages are read off
the command's own progress bars on stderr (each bar's first and last report, time-stamped):
start-up + tissue + tiling (until the tissue bar), extraction (until the last tile), CARE
and the phenotype groups (until the segment bar), then writing and exit.

One more fresh process per slide runs the same core calls in turn with a clock around each
(imports, opening, tissue, tiling, extraction, CARE, writing) and the peak RSS after each:
the per-stage figures in detail; it is not counted in the repeats.

Prints the load average before and after each run, the slide's size, and whether the file
fits in RAM (the page cache is not dropped, it would disturb the others sharing this
machine; every file is read once beforehand so each repeat finds it in memory alike).
Writes ``docs/results/whole_slide.json``. Wrap it in ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gigapixel
from result_files import RESULTS, write_result
from slide_files import slide_file_record, warm_page_cache

RESULT = RESULTS / "whole_slide.json"
TARGET_WALL_S = 30.0
TARGET_PEAK_BYTES = 2 * 10**9
TARGET_GROWTH = 0.20  # the 4x slide's peak at most 20% above the 1x slide's
SAMPLE_S = 0.05
SIZES = {"1x": (100_000, 80_000), "4x": (200_000, 160_000)}
BAR = re.compile(r"(tissue|extract|segment):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def command_line(slide: Path, out_dir: Path) -> list[str]:
    """``napari-care segment SLIDE --out DIR``: the console script next to this interpreter."""
    script = Path(sys.executable).with_name("napari-care")
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "napari_care.cli"]
    return [*program, "segment", str(slide), "--out", str(out_dir)]


class BarClock:
    """Time-stamps the first and last report of each progress bar in a child's stderr."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.counts: dict[str, tuple[int, int]] = {}
        self.text: list[str] = []

    def read(self, stream) -> None:
        """Read ``stream`` (binary) to its end; tqdm redraws with carriage returns."""
        pending = b""
        while chunk := stream.read1(65536):
            now = time.perf_counter() - self.start
            pending += chunk
            *pieces, pending = re.split(rb"[\r\n]", pending)
            if pending.rstrip().endswith(b"]"):  # tqdm writes "\r" + a whole bar: it is complete
                pieces.append(pending)
                pending = b""
            for piece in pieces:
                self._line(piece.decode("utf-8", "replace"), now)
        self._line(pending.decode("utf-8", "replace"), time.perf_counter() - self.start)

    def _line(self, line: str, now: float) -> None:
        match = BAR.search(line)
        if match is None:
            if line.strip():
                self.text.append(line.strip())
            return
        stage, done, total = match.group(1), int(match.group(2)), int(match.group(3))
        self.first.setdefault(stage, now)
        if done == total:
            self.last.setdefault(stage, now)
        self.counts[stage] = (done, total)


class RssSampler:
    """Samples the resident memory of a process and its children; keeps the peak and when it was."""

    def __init__(self, pid: int, start: float) -> None:
        self.process = psutil.Process(pid)
        self.start = start
        self.peak_bytes = 0
        self.peak_at_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        """Sample until :attr:`stop` is set or the process is gone."""
        while not self.stop.is_set():
            try:
                rss = self.process.memory_info().rss
                rss += sum(child.memory_info().rss for child in self.process.children(recursive=True))
            except psutil.Error:
                return
            if rss > self.peak_bytes:
                self.peak_bytes, self.peak_at_s = rss, time.perf_counter() - self.start
            self.stop.wait(SAMPLE_S)


def stage_of(seconds: float, bars: BarClock) -> str:
    """The stage a moment of a run fell in, from the bars' time stamps."""
    marks = [
        ("start-up, tissue, tiling", bars.first.get("tissue")),
        ("extraction", bars.last.get("extract")),
        ("CARE", bars.first.get("segment")),
    ]
    for name, end in marks:
        if end is not None and seconds <= end:
            return name
    return "writing"


def cli_run(slide: Path, work_dir: Path) -> dict:
    """One fresh ``napari-care segment`` of ``slide``: wall, peak RSS, stages, tiles."""
    out_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    load_before = load()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    child = subprocess.Popen(
        command_line(slide, out_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    bars = BarClock(start)
    sampler = RssSampler(child.pid, start)
    readers = [
        threading.Thread(target=bars.read, args=(child.stderr,), daemon=True),
        threading.Thread(target=sampler.run, daemon=True),
    ]
    stdout: list[bytes] = []
    readers.append(threading.Thread(target=lambda: stdout.append(child.stdout.read()), daemon=True))
    for thread in readers:
        thread.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    for thread in readers:
        thread.join()
    shutil.rmtree(out_dir, ignore_errors=True)
    text = b"".join(stdout).decode("utf-8", "replace")
    if child.returncode != 0:
        raise RuntimeError(f"napari-care exited {child.returncode}:\n{text}\n" + "\n".join(bars.text[-20:]))
    tiles = bars.counts.get("extract", (0, 0))[1]
    tissue_end = bars.first.get("tissue", float("nan"))
    extract_end = bars.last.get("extract", float("nan"))
    care_end = bars.first.get("segment", float("nan"))
    return {
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: kilobytes
        "sampled_peak_rss_bytes": sampler.peak_bytes,
        "sampled_peak_stage": stage_of(sampler.peak_at_s, bars),
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "tiles": tiles,
        "tiles_per_s": tiles / wall if wall else 0.0,
        "stages_s": {
            "start-up, tissue, tiling": tissue_end,
            "extraction": extract_end - tissue_end,
            "CARE and groups": care_end - extract_end,
            "writing and exit": wall - care_end,
        },
        "load_before": load_before,
        "load_after": load(),
        "detail": next((line for line in text.splitlines() if " done " in line), "").strip(),
    }


def staged_child(slide: Path, out_dir: Path) -> None:
    """In a fresh process: the core calls of ``segment`` one by one, each timed; prints JSON."""
    marks: dict[str, float] = {}
    peaks: dict[str, int] = {}
    ends: list[tuple[str, float]] = []
    samples: list[tuple[float, int]] = []
    me = psutil.Process()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), me.memory_info().rss))
            stop.wait(SAMPLE_S / 2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clock = time.perf_counter()

    def mark(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        marks[stage] = now - clock
        peaks[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ends.append((stage, now))
        clock = now

    from napari_care.core.outputs import write_outputs
    from napari_care.core.progress import run_to_end
    from napari_care.core.segment import SegmentOptions, build_encoder, segment
    from napari_care.core.slide.handle import open_slide
    from napari_care.core.tiling import tile_grid
    from napari_care.core.tissue import tissue_mask

    mark("imports")
    options = SegmentOptions()
    with open_slide(slide) as handle:
        mark("open")
        tissue = tissue_mask(handle, saturation_threshold=options.tissue_threshold)
        mark("tissue")
        grid = tile_grid(
            handle,
            magnification=options.magnification,
            tile_size_px=options.tile_size_px,
            min_tissue=options.min_tissue,
            tissue=tissue,
        )
        mark("tiling")
        encoder = build_encoder(options)
        mark("encoder")
        last_stage = None

        def on_progress(report) -> None:
            # segment() lays the grid again (cheap) and reports "tissue" when it has it
            nonlocal last_stage
            if report.stage != last_stage and last_stage in ("tissue", "extract"):
                mark({"tissue": "tiling again (in segment)", "extract": "extraction"}[last_stage])
            last_stage = report.stage
            if report.stage == "segment" and report.done == report.total:
                mark("CARE and groups")

        result = run_to_end(segment(handle, options, tissue=tissue, encoder=encoder), on_progress)
        write_outputs(result, handle, out_dir, slide.stem)
        mark("writing")
    stop.set()
    sampler.join()
    # the highest sampled RSS within each stage: which stage's own working set is the largest
    stage_peaks, begin = {}, 0.0
    for stage, end in ends:
        stage_peaks[stage] = max((rss for at, rss in samples if begin <= at <= end), default=0)
        begin = end
    print(
        json.dumps(
            {
                "tiles": len(grid),
                "seconds": marks,
                "peak_rss_after_bytes": peaks,
                "sampled_peak_rss_in_stage_bytes": stage_peaks,
            }
        )
    )


def staged_run(slide: Path, work_dir: Path) -> dict:
    """:func:`staged_child` in a fresh interpreter."""
    out_dir = Path(tempfile.mkdtemp(prefix="staged-", dir=work_dir))
    done = subprocess.run(
        [sys.executable, __file__, "--staged-child", str(slide), str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"staged run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slide_record(path: Path) -> dict:
    """Size, dimensions and whether the file fits in RAM."""
    from napari_care.core.slide.handle import open_slide

    with open_slide(path) as slide:
        width, height = slide.dimensions[0]
    return slide_file_record(path, width, height)


def summarise(runs: list[dict]) -> dict:
    """Medians (and extremes) over the repeats of one slide."""
    walls = [run["wall_s"] for run in runs]
    peaks = [run["peak_rss_bytes"] for run in runs]
    stages = {name: statistics.median(run["stages_s"][name] for run in runs) for name in runs[0]["stages_s"]}
    return {
        "repeats": len(runs),
        "wall_s": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
        "peak_rss_bytes": {"median": statistics.median(peaks), "min": min(peaks), "max": max(peaks)},
        "tiles": runs[0]["tiles"],
        "tiles_per_s": statistics.median(run["tiles_per_s"] for run in runs),
        "stages_s": stages,
        "runs": runs,
    }


def print_run(name: str, index: int, run: dict) -> None:
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run["stages_s"].items())
    print(
        f"  {name} run {index}: wall {run['wall_s']:.1f} s (user {run['user_s']:.1f} s, system "
        f"{run['system_s']:.1f} s), peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB (sampled "
        f"{run['sampled_peak_rss_bytes'] / 1e9:.2f} GB, in {run['sampled_peak_stage']}), "
        f"{run['tiles']} tiles, "
        f"{run['tiles_per_s']:.0f} tiles/s; {stages}; load {run['load_before']} -> {run['load_after']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs on the 1x slide")
    parser.add_argument("--repeat-4x", type=int, default=2, help="runs on the 4x slide")
    parser.add_argument("--no-4x", action="store_true", help="leave out the 4x slide")
    parser.add_argument("--no-build", action="store_true", help="do not build a missing 4x slide")
    parser.add_argument("--no-staged", action="store_true", help="leave out the per-stage run")
    parser.add_argument("--no-result", action="store_true", help="do not write docs/results/")
    parser.add_argument(
        "--staged-child", nargs=2, type=Path, metavar=("SLIDE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.staged_child:
        staged_child(*args.staged_child)
        return

    load_at_start = load()
    print(f"{os.cpu_count()} cores; load average at start {load_at_start}")
    wanted = {"1x": args.repeat} if args.no_4x else {"1x": args.repeat, "4x": args.repeat_4x}
    slides: dict[str, Path] = {}
    for name in wanted:
        width, height = SIZES[name]
        paths = make_gigapixel.slide_paths(make_gigapixel.DEFAULT_OUT, width, height, 0)
        if not paths.exist() and (args.no_build and name != "1x"):
            print(f"{name}: {paths.svs} is not built (--no-build); left out")
            continue
        slides[name] = make_gigapixel.build_gigapixel(
            make_gigapixel.DEFAULT_OUT, width=width, height=height
        ).svs

    document: dict = {"targets": {}, "slides": {}, "load_average_at_start": load_at_start}
    with tempfile.TemporaryDirectory(prefix="bench_whole_slide-") as work:
        work_dir = Path(work)
        for name, path in slides.items():
            record = slide_record(path)
            warm_page_cache(path)
            print(
                f"{name}: {path.name}: {record['width']:,} x {record['height']:,} px, "
                f"{record['bytes']:,} bytes "
                f"({record['bytes'] / 2**30:.2f} GiB); RAM {record['ram_bytes'] / 2**30:.1f} GiB: the file "
                f"{'fits in RAM and is in the page cache' if record['fits_in_ram'] else 'exceeds RAM'} "
                "(read once beforehand, not dropped)"
            )
            runs = []
            for index in range(wanted[name]):
                runs.append(cli_run(path, work_dir))
                print_run(name, index + 1, runs[-1])
            record |= summarise(runs)
            if not args.no_staged:
                staged = staged_run(path, work_dir)
                record["staged"] = staged
                print(
                    f"  {name} stages (one fresh in-process run, {staged['tiles']} tiles): "
                    + ", ".join(
                        f"{stage} {seconds:.1f} s (RSS up to "
                        f"{staged['sampled_peak_rss_in_stage_bytes'][stage] / 1e9:.2f} GB)"
                        for stage, seconds in staged["seconds"].items()
                    )
                )
            document["slides"][name] = record

    one = document["slides"].get("1x")
    four = document["slides"].get("4x")
    if one:
        wall, peak = one["wall_s"]["median"], one["peak_rss_bytes"]["max"]
        document["targets"]["wall under 30 s (1x, median)"] = {"value_s": wall, "met": wall < TARGET_WALL_S}
        document["targets"]["peak RSS under 2 GB (1x, max)"] = {
            "value_bytes": peak,
            "met": peak < TARGET_PEAK_BYTES,
        }
    if one and four:
        growth = four["peak_rss_bytes"]["max"] / one["peak_rss_bytes"]["max"] - 1.0
        document["targets"]["peak RSS 4x at most 20% above 1x"] = {
            "growth": growth,
            "met": growth <= TARGET_GROWTH,
        }
    for target, figure in document["targets"].items():
        value = next(v for k, v in figure.items() if k != "met")
        shown = (
            f"{value:.1%}"
            if "growth" in figure
            else (f"{value / 1e9:.2f} GB" if "value_bytes" in figure else f"{value:.1f} s")
        )
        print(f"{target}: {shown} -> {'met' if figure['met'] else 'MISSED'}")
    document["load_average_at_end"] = load()
    print(f"load average at end {document['load_average_at_end']}")
    if not args.no_result:
        print(f"wrote {write_result(RESULT, 'whole_slide', document)}")


if __name__ == "__main__":
    main()
