"""Benchmark ``segment --features``: a TRIDENT folder of 20 slides segmented from its features,
against the same slides segmented with extraction.

    python benchmarks/bench_features_segment.py [--slides 20] [--size 8192x6144] [--repeats 3]
                                                [--workdir DIR] [--json PATH]

Builds (once, into ``--workdir``) ``--slides`` generated H&E slides (pyramidal JPEG OME-TIFF,
0.5 um/px, the synthetic generator's layouts in turn, seeds 0..N-1), then times, each
``--repeats`` times, as a user runs them (a fresh ``napari-care`` process, one slide after
the other in it):

- with extraction: ``napari-care segment SLIDES --layout trident --out job`` (tissue, tiles,
  the default encoder, CARE, the outputs; the features land in ``job/features_default/``);
- from features: ``napari-care segment --features job/features_default --out seg``
  (CARE and the outputs only; no slide opened, no tile read).

It checks that both give each slide the same regions and ROI (``care.json``), prints the
seconds (median and range over the repeats), the ratio, the machine's load average, and
writes them with the slides' sizes to ``--json`` (default
``docs/results/features_segment.json``).
"""

from __future__ import annotations

import argparse
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

LAYOUTS = ("default", "islands", "bands")
ROOT = Path(__file__).resolve().parent.parent


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


def napari_care(*arguments: str | os.PathLike[str]) -> float:
    """Run ``napari-care ARGUMENTS`` in a fresh process; its wall seconds (an error stops the benchmark)."""
    script = Path(sys.executable).with_name("napari-care")  # the entry point a user runs
    entry = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from napari_care.cli.app import main; main()"]
    )
    command = [*entry, *map(str, arguments), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def regions_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Per slide, (regions, ROI) from its ``care.json``."""
    found = {}
    for summary in sorted(folder.glob("*.care.json")):
        document = json.loads(summary.read_text())
        found[summary.name.removesuffix(".care.json")] = (document["regions_count"], document["roi"])
    return found


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--size", default="8192x6144", help="level-0 WIDTHxHEIGHT of each slide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=Path.home() / ".cache" / "napari_care" / "bench_features_segment"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "features_segment.json")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    slides = build_slides(args.workdir / f"slides_{width}x{height}", args.slides, width, height)
    job, seg = args.workdir / "job", args.workdir / "seg"
    with_extraction, from_features = [], []
    for repeat in range(args.repeats):
        for folder in (job, seg):
            shutil.rmtree(folder, ignore_errors=True)
        load_before = os.getloadavg()
        with_extraction.append(napari_care("segment", *slides, "--layout", "trident", "--out", job))
        from_features.append(napari_care("segment", "--features", job / "features_default", "--out", seg))
        print(
            f"repeat {repeat + 1}: with extraction {with_extraction[-1]:.1f} s, "
            f"from features {from_features[-1]:.1f} s (load {load_before[0]:.2f})",
            flush=True,
        )
    same = regions_of(job) == regions_of(seg) and len(regions_of(job)) == len(slides)
    patches = sum(json.loads(p.read_text())["patches"] for p in job.glob("*.care.json"))
    result = {
        "experiment": "features_segment",
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "data": {
            "slides": len(slides),
            "level0_px": [width, height],
            "mpp": 0.5,
            "layouts": list(LAYOUTS),
            "seeds": list(range(len(slides))),
            "patches_total": patches,
            "encoder": "default",
        },
        "repeats": args.repeats,
        "seconds_with_extraction": spread(with_extraction),
        "seconds_from_features": spread(from_features),
        "speedup_median": statistics.median(with_extraction) / statistics.median(from_features),
        "same_regions_and_roi": same,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(slides)} slides of {width} x {height} px ({patches} patches): with extraction "
        f"{result['seconds_with_extraction']['median']:.1f} s "
        f"[{min(with_extraction):.1f}-{max(with_extraction):.1f}], from TRIDENT features "
        f"{result['seconds_from_features']['median']:.1f} s "
        f"[{min(from_features):.1f}-{max(from_features):.1f}], "
        f"{result['speedup_median']:.1f}x; same regions and ROI: {same}; load {os.getloadavg()[0]:.2f}"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
