"""``napari-care review`` by class at slide scale: 100k annotation polygons against a 100k-patch run,
with the phenotype-group rows and the class x group table (target: under 30 s).

The inputs are :mod:`bench_review`'s (a label grid of ~100,000 patches of 448 level-0 px in
~1,500 Voronoi regions in 12 phenotype groups, three cell classes and large "Tumor" outlines),
written once in a temporary folder. The review runs in a fresh process through
:func:`napari_care.core.review.run.iter_review_files_tables` (what the CLI drives), which
checks the annotations' overlap with the slide, computes the ROI, group and region rows and
the class x group table, and writes both CSVs. Printed: the sizes, the seconds per stage and
in all, the rows of each table, where the pointing game was played, the peak RSS and the
load average (the machine may be shared: see ``benchmarks/README.md``).

Run: ``python benchmarks/bench_review_classes.py [--patches 100000 --polygons 100000]``; a
quick check: ``--patches 10000 --polygons 5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_review beside this file
from bench_review import PATCH_PX, annotation_features, peak_rss_mib, region_labels, write_run
from result_files import RESULTS, write_result

RESULT_LINE = "figures: "  # the child's last line: its figures as JSON


def review(folder: Path) -> dict:
    """Review ``folder``'s files with both tables (in a fresh process: its peak RSS is the review's);
    its figures."""
    from napari_care.core.progress import run_to_end
    from napari_care.core.review.run import class_table_path, iter_review_files_tables

    load_before = os.getloadavg()
    stage_start: dict[str, float] = {}

    def on_progress(report) -> None:
        stage_start.setdefault(report.stage, time.perf_counter())

    out = folder / "agreement.csv"
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work = iter_review_files_tables(folder / "slide.care.json", folder / "annotations.geojson", out)
        tables = run_to_end(work, on_progress)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stages = list(stage_start.items())
    ends = [began for _, began in stages[1:]] + [start + seconds]
    for (stage, began), ended in zip(stages, ends, strict=True):
        print(f"  stage {stage:<8} {ended - began:7.2f} s")
    groups = sum(row["target"] == "group" for row in tables.rows)
    print(
        f"review: {len(tables.rows):,} agreement rows ({groups} group rows), "
        f"{len(tables.class_by_group)} class x group rows -> {class_table_path(out).name}, "
        f"pointing game on the {tables.pointing_on}s; {seconds:.2f} s (CPU {cpu:.2f} s), "
        f"peak RSS {peak_rss_mib():,.0f} MiB, target < 30 s"
    )
    for row in tables.class_by_group:
        if row["best_group"]:
            print(f"  {row['class']}: best group {row['group_id']} (dice {row['dice']:.3f})")
    print(f"warnings: {len(caught)}" + "".join(f"\n  {str(w.message)[:160]}" for w in caught[:3]))
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "stage_seconds": {stage: ended - began for (stage, began), ended in zip(stages, ends, strict=True)},
        "agreement_rows": len(tables.rows),
        "group_rows": groups,
        "class_by_group_rows": len(tables.class_by_group),
        "pointing_on": tables.pointing_on,
        "best_groups": {
            row["class"]: {"group": int(row["group_id"]), "dice": float(row["dice"])}
            for row in tables.class_by_group
            if row["best_group"]
        },
        "peak_rss_mib": peak_rss_mib(),
        "warnings": len(caught),
        "load_average_before": list(load_before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000, help="tissue patches of the run (about)")
    parser.add_argument("--polygons", type=int, default=100_000, help="annotation polygons")
    parser.add_argument("--json", type=Path, default=RESULTS / "review_classes.json")
    parser.add_argument("--review-only", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.review_only is not None:
        print(RESULT_LINE + json.dumps(review(args.review_only)))
        return
    labels = region_labels(args.patches)
    print(
        f"run: grid {labels.shape[1]} x {labels.shape[0]} cells of {PATCH_PX:g} px, "
        f"{int((labels >= 0).sum()):,} patches, {len(np.unique(labels[labels >= 0])):,} regions in 12 groups"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_run(folder, labels, tiles=False)
        features, _ = annotation_features(labels, args.polygons, share_invalid=0.0)
        with open(folder / "annotations.geojson", "w", encoding="utf-8") as handle:
            json.dump({"type": "FeatureCollection", "features": features}, handle)
        print(f"annotations: {len(features):,} polygons", flush=True)
        del features
        done = subprocess.run(
            [sys.executable, __file__, "--review-only", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        )
    lines = done.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith(RESULT_LINE)))
    figures = json.loads(next(line for line in lines if line.startswith(RESULT_LINE))[len(RESULT_LINE) :])
    data = {
        "grid_cells": [int(labels.shape[1]), int(labels.shape[0])],
        "patch_px": PATCH_PX,
        "patches": int((labels >= 0).sum()),
        "regions": len(np.unique(labels[labels >= 0])),
        "groups": 12,
        "polygons": args.polygons,
    }
    path = write_result(
        args.json, "review_classes", {"data": data, "review": figures, "target_seconds": 30.0}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
