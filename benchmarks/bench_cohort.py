"""Benchmark a cohort on a local dask cluster against the same slides one after another in one process.

    python benchmarks/bench_cohort.py [--slides 20] [--size 36864x27648] [--workers 0 1 2]
                                      [--workdir DIR] [--json PATH]

Builds (once, into ``--workdir``) ``--slides`` generated H&E slides (pyramidal JPEG OME-TIFF at
0.5 um/px, seeds 0..N-1, the "default" and "bands" layouts in turn; each holds more than
5,000 tissue tiles at 20x), then runs, as a user does, ``napari-care segment SLIDES --out DIR
--workers W`` for each ``W`` of ``--workers`` (0: in this process, one slide after the other;
1, 2: a local cluster of that many worker processes), each in a fresh process with a fresh
output folder. The order of the configurations is rotated between repeats, so the page cache
favours none.

Printed and written to ``--json`` (default ``docs/results/cohort.json``): per configuration the
wall seconds of the whole command (cluster start-up included), slides and tiles per second,
the throughput relative to ``--workers 0`` (target: at least 0.8), the median per-slide
seconds the rows report, the load average before each run, and whether every configuration
gave each slide the same regions and ROI.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from napari_care.core.synthetic.slides import build_synthetic_slide

sys.path.insert(0, str(Path(__file__).resolve().parent))  # result_files beside this file
from result_files import git_commit

LAYOUTS = ("default", "bands")
ROOT = Path(__file__).resolve().parent.parent
MIN_TILES = 5000
CACHE = Path.home() / ".cache" / "napari_care" / "bench_cohort"


def build_slides(folder: Path, count: int, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"slide{seed:02d}.ome.tif"
        if not path.exists():
            started = time.perf_counter()
            build_synthetic_slide(
                path, width=width, height=height, seed=seed, layout=LAYOUTS[seed % len(LAYOUTS)]
            )
            print(f"built {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
        paths.append(path)
    return paths


def segment(slides: list[Path], out: Path, workers: int) -> float:
    """``napari-care segment`` of the slides in a fresh process; its wall seconds."""
    script = Path(sys.executable).with_name("napari-care")
    entry = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from napari_care.cli.app import main; main()"]
    )
    command = [*entry, "segment", *map(str, slides), "--out", str(out), "--workers", str(workers), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def rows_of(out: Path) -> list[dict[str, str]]:
    with (out / "segment-summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def regions_of(out: Path) -> dict[str, tuple[int, int, int]]:
    """Per slide, (patches, regions, ROI) from its ``care.json``."""
    found = {}
    for summary in sorted(out.glob("*.care.json")):
        document = json.loads(summary.read_text())
        found[summary.name] = (document["patches"], document["regions_count"], document["roi"])
    return found


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--size", default="36864x27648", help="level-0 WIDTHxHEIGHT of each slide")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "cohort.json")
    args = parser.parse_args()
    if 0 not in args.workers:
        parser.error("--workers must include 0 (the one-process baseline)")
    width, height = (int(side) for side in args.size.lower().split("x"))
    slides = build_slides(args.workdir / f"slides_{width}x{height}", args.slides, width, height)
    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    per_slide: dict[int, list[float]] = {w: [] for w in args.workers}
    loads: dict[int, list[float]] = {w: [] for w in args.workers}
    found: dict[int, dict] = {}
    for repeat in range(args.repeats):
        order = args.workers[repeat % len(args.workers) :] + args.workers[: repeat % len(args.workers)]
        for workers in order:
            out = args.workdir / f"out_workers{workers}"
            shutil.rmtree(out, ignore_errors=True)
            loads[workers].append(os.getloadavg()[0])
            seconds[workers].append(segment(slides, out, workers))
            rows = rows_of(out)
            if any(row["status"] != "done" for row in rows):
                raise SystemExit(f"--workers {workers}: not every slide was done: {rows}")
            per_slide[workers].append(statistics.median(float(row["seconds"]) for row in rows))
            found[workers] = regions_of(out)
            print(
                f"repeat {repeat + 1}, --workers {workers}: {seconds[workers][-1]:.1f} s "
                f"(median slide {per_slide[workers][-1]:.2f} s; load before {loads[workers][-1]:.2f})",
                flush=True,
            )
    tiles = [patches for patches, _, _ in found[0].values()]
    same = all(found[w] == found[0] for w in args.workers)
    baseline = statistics.median(seconds[0])
    configurations = {}
    for workers in args.workers:
        wall = statistics.median(seconds[workers])
        configurations[str(workers)] = {
            "seconds": spread(seconds[workers]),
            "slides_per_second": len(slides) / wall,
            "tiles_per_second": sum(tiles) / wall,
            "throughput_vs_one_process": baseline / wall,
            "median_slide_seconds": spread(per_slide[workers]),
            "load_average_before": loads[workers],
        }
    result = {
        "experiment": "cohort",
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "data": {
            "slides": len(slides),
            "level0_px": [width, height],
            "mpp": 0.5,
            "layouts": list(LAYOUTS),
            "seeds": list(range(len(slides))),
            "tiles_per_slide": {"min": min(tiles), "median": statistics.median(tiles), "max": max(tiles)},
            "tiles_total": sum(tiles),
            "encoder": "default",
        },
        "repeats": args.repeats,
        "workers": configurations,
        "target_throughput_vs_one_process": 0.8,
        "same_regions_and_roi": same,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(slides)} slides of {width} x {height} px, {min(tiles)}-{max(tiles)} tissue tiles each "
        f"({sum(tiles)} in all); same regions and ROI everywhere: {same}"
    )
    for workers, figures in configurations.items():
        print(
            f"--workers {workers}: {figures['seconds']['median']:.1f} s, "
            f"{figures['slides_per_second']:.3f} slides/s, {figures['tiles_per_second']:.0f} tiles/s, "
            f"{figures['throughput_vs_one_process']:.2f}x one process"
        )
    if min(tiles) < MIN_TILES:
        print(f"note: the smallest slide has {min(tiles)} tiles, under {MIN_TILES}: use a larger --size")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
