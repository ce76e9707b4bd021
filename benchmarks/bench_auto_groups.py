"""Benchmark ``--groups auto``: how often the chosen number of phenotype groups is the planted one.

    python benchmarks/bench_auto_groups.py [--dev-seeds 4] [--test-seeds 5] [--size 12288x9216]
                                           [--phase all|dev] [--json PATH] [--workdir DIR]

Generated slides (:func:`~napari_care.core.synthetic.planted_types.build_planted_slide`:
one piece of tissue cut into a mosaic, 2 lobed patches per planted type, 3 to 8 types drawn
from 9 textures; pyramidal JPEG OME-TIFF, 0.5 um/px) are segmented as the command line does
(:func:`~napari_care.core.segment.segment` with the default :class:`SegmentOptions`: the
default encoder, 224 px tiles at 20x, CARE's training-free regions, ``n_groups="auto"``).

- **Development** slides (seeds 0..``--dev-seeds``-1 for each planted count): every candidate
  criterion of :mod:`napari_care.core.group_count` with every tolerance of
  :data:`TOLERANCES` picks N from the same k-means fits (the ones ``"auto"`` makes); the
  candidate with the highest rate of N == planted, ties broken by the mean ARI at the chosen
  N, is the choice. The code's default (``DEFAULT_CRITERION``, ``DEFAULT_TOLERANCE`` of
  :mod:`napari_care.core.phenotypes`) must be that choice: the script says so when it is not.
- **Test** slides (seeds 1000..1000+``--test-seeds``-1, which no choice saw): per planted
  count, how often the N that ``segment()`` chose equals the planted one, the ARI to the
  planted types at the chosen N and at the oracle N (the planted count), mean and standard
  deviation over the seeds.

ARIs are over the patches whose majority truth is tissue. Also timed: the phenotype step of
a slide with a few hundred regions, ``"auto"`` (k-means for N = 2..12 and the criterion)
against a fixed N. Writes ``--json`` (default ``docs/results/auto_groups.json``) and prints
the tables. ``--phase dev`` runs the development slides only (to choose the default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_care.core import open_slide, run_to_end
from napari_care.core.atomic import atomic_open
from napari_care.core.care_run import segment_features
from napari_care.core.group_count import CRITERIA, criterion_scores, pick_n_groups
from napari_care.core.partition_metrics import adjusted_rand_index
from napari_care.core.phenotypes import (
    AUTO_GROUPS_RANGE,
    DEFAULT_CRITERION,
    DEFAULT_TOLERANCE,
    largest_candidate,
    phenotype_groups,
    region_descriptors,
    scan_group_counts,
)
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.synthetic.planted_types import PATCHES_PER_TYPE, PLANTED_TEXTURES, build_planted_slide

sys.path.insert(0, str(Path(__file__).resolve().parent))  # result_files beside this file
from result_files import git_commit

ROOT = Path(__file__).resolve().parent.parent
PLANTED_COUNTS = tuple(range(3, 9))
DEV_SEED_START, TEST_SEED_START = 0, 1000
TOLERANCES = (0.0, 0.05, 0.1, 0.2)


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def measure_slide(folder: Path, n_types: int, seed: int, size: tuple[int, int]) -> dict:
    """Build one slide, segment it as the CLI does, and score every candidate criterion on it."""
    path = folder / f"planted{n_types}_seed{seed}.ome.tif"
    started = time.perf_counter()
    planted = build_planted_slide(path, n_types, seed=seed, width=size[0], height=size[1], workers=2)
    built = time.perf_counter()
    with open_slide(path) as slide:
        result = run_to_end(segment(slide, SegmentOptions()))
    segmented = time.perf_counter()
    care, features = result.care, result.features.features
    truth = planted.truth_at(result.features.coords, result.grid.tile_size_level0)
    on_tissue = truth > 0
    descriptors = region_descriptors(care, features)
    weights = np.asarray(care.region_sizes, np.float64)
    n_distinct = len(np.unique(descriptors.round(decimals=9), axis=0))
    candidates = range(AUTO_GROUPS_RANGE[0], largest_candidate(care.n_regions, n_distinct) + 1)
    labels_of_n = scan_group_counts(descriptors, weights, candidates)  # the fits "auto" makes

    def ari(labels: np.ndarray) -> float:
        return adjusted_rand_index(labels[care.region_of_patch][on_tissue], truth[on_tissue])

    ari_of_n = {n: ari(labels) for n, labels in labels_of_n.items()}
    scores = {
        criterion: criterion_scores(descriptors, labels_of_n, weights, criterion) for criterion in CRITERIA
    }
    picks = {
        f"{criterion}@{tolerance:g}": pick_n_groups(scores[criterion], tolerance)
        for criterion in CRITERIA
        for tolerance in TOLERANCES
    }
    phenotypes = result.extras["phenotypes"]
    # the regions' ceiling: every region its majority planted type
    counts = np.zeros((care.n_regions, n_types + 1))
    np.add.at(counts, (care.region_of_patch[on_tissue], truth[on_tissue]), 1)
    ceiling = ari(counts.argmax(axis=1))
    return {
        "planted": n_types,
        "seed": seed,
        "textures": [texture.name for texture in planted.planted_types],
        "patches": int(care.n_patches),
        "tissue_patches": int(on_tissue.sum()),
        "regions": int(care.n_regions),
        "chosen": int(phenotypes.n_groups),
        "criterion": phenotypes.criterion,
        "ari_chosen": float(ari_of_n.get(phenotypes.n_groups, float("nan"))),
        "ari_oracle": float(ari_of_n.get(n_types, float("nan"))),
        "ari_best_n": max(ari_of_n.values()),
        "ari_region_ceiling": float(ceiling),
        "ari_of_n": {str(n): round(value, 4) for n, value in ari_of_n.items()},
        "picks": picks,
        "scores": {c: {str(n): round(v, 5) for n, v in s.items()} for c, s in scores.items()},
        "seconds_build": built - started,
        "seconds_segment": segmented - built,
    }


def candidate_table(rows: list[dict]) -> dict[str, dict]:
    """Per candidate: the rate of N == planted and the ARI at its chosen N, over ``rows``."""
    table = {}
    for name in rows[0]["picks"]:
        hits = [row["picks"][name] == row["planted"] for row in rows]
        aris = [row["ari_of_n"][str(row["picks"][name])] for row in rows]
        errors = [abs(row["picks"][name] - row["planted"]) for row in rows]
        table[name] = {
            "exact_rate": float(np.mean(hits)),
            "ari_chosen": mean_sd(aris),
            "mean_abs_error": float(np.mean(errors)),
        }
    return table


def choose_candidate(table: dict[str, dict]) -> str:
    """The candidate with the best exact rate, then the best mean ARI, then the smaller tolerance."""
    order = [f"{criterion}@{tolerance:g}" for criterion in CRITERIA for tolerance in TOLERANCES]
    return max(
        order,
        key=lambda name: (table[name]["exact_rate"], table[name]["ari_chosen"]["mean"], -order.index(name)),
    )


def per_count_table(rows: list[dict]) -> list[dict]:
    table = []
    for count in PLANTED_COUNTS:
        mine = [row for row in rows if row["planted"] == count]
        if not mine:
            continue
        table.append(
            {
                "planted": count,
                "slides": len(mine),
                "seeds": [row["seed"] for row in mine],
                "exact_rate": float(np.mean([row["chosen"] == count for row in mine])),
                "chosen_n": [row["chosen"] for row in mine],
                "ari_chosen": mean_sd([row["ari_chosen"] for row in mine]),
                "ari_oracle": mean_sd([row["ari_oracle"] for row in mine]),
                "ari_region_ceiling": mean_sd([row["ari_region_ceiling"] for row in mine]),
                "regions": mean_sd([row["regions"] for row in mine]),
            }
        )
    return table


def time_phenotype_step(repeats: int = 5) -> dict:
    """Seconds of the phenotype step, ``"auto"`` against a fixed N, on a slide of a few hundred regions."""
    rng = np.random.default_rng(7)
    cols, rows, dim = 150, 120, 81  # 18,000 patches, the default encoder's width
    gx, gy = np.meshgrid(np.arange(cols), np.arange(rows))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    # 6 planted types in 24 lobes (a Voronoi mosaic of the grid), features near each type's mean
    seeds = rng.uniform([0, 0], [cols, rows], (24, 2))
    lobe = ((grid[:, None, :] - seeds[None]) ** 2).sum(axis=2).argmin(axis=1)
    type_of_patch = (lobe % 6).astype(np.int64)
    features = (rng.normal(size=(6, dim)) * 2)[type_of_patch] + rng.normal(size=(len(grid), dim))
    features = features.astype(np.float32)
    care = segment_features(features, grid)
    phenotype_groups(care, 6, patch_features=features)  # imports and warms up

    def best_of(n_groups) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            phenotype_groups(care, n_groups, patch_features=features)
            times.append(time.perf_counter() - started)
        return min(times)

    fixed, auto = best_of(6), best_of("auto")
    return {
        "data": f"{len(grid)} patches of {dim}-d features on a {cols} x {rows} grid, 6 types in 24 lobes, "
        "CARE training-free regions",
        "regions": int(care.n_regions),
        "repeats": repeats,
        "seconds_fixed_6_min": fixed,
        "seconds_auto_min": auto,
        "seconds_added_by_auto": auto - fixed,
    }


def print_tables(report: dict) -> None:
    print("\ndevelopment slides: candidate criteria (rate N == planted, ARI at the chosen N)")
    for name, row in sorted(report["development"]["candidates"].items(), key=lambda kv: -kv[1]["exact_rate"]):
        ari = row["ari_chosen"]
        print(
            f"  {name:24} {row['exact_rate']:5.2f}  ARI {ari['mean']:.3f} +- {ari['sd']:.3f}  "
            f"|N-err| {row['mean_abs_error']:.2f}"
        )
    print(f"  chosen: {report['development']['chosen_candidate']}")
    if "test" in report:
        print(
            "\ntest slides (seeds no choice saw): planted N, slides, rate chosen == planted, chosen Ns, "
            "ARI chosen, ARI oracle"
        )
        for row in report["test"]["per_planted_count"]:
            chosen, oracle = row["ari_chosen"], row["ari_oracle"]
            print(
                f"  {row['planted']}  {row['slides']}  {row['exact_rate']:4.2f}  {row['chosen_n']}  "
                f"{chosen['mean']:.3f} +- {chosen['sd']:.3f}  {oracle['mean']:.3f} +- {oracle['sd']:.3f}"
            )
        overall = report["test"]["overall"]
        print(
            f"  all  {overall['slides']}  {overall['exact_rate']:4.2f}  "
            f"ARI chosen {overall['ari_chosen']['mean']:.3f} +- {overall['ari_chosen']['sd']:.3f}, "
            f"oracle {overall['ari_oracle']['mean']:.3f} +- {overall['ari_oracle']['sd']:.3f}"
        )
    timing = report["timing"]
    print(
        f"\nphenotype step, {timing['regions']} regions: fixed N {timing['seconds_fixed_6_min']:.3f} s, "
        f"auto {timing['seconds_auto_min']:.3f} s (+{timing['seconds_added_by_auto']:.3f} s)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev-seeds", type=int, default=4, help="Development slides per planted count.")
    parser.add_argument("--test-seeds", type=int, default=5, help="Test slides per planted count (>= 5).")
    parser.add_argument("--size", default="12288x9216", help="Slide width x height in pixels (0.5 um/px).")
    parser.add_argument("--phase", choices=("all", "dev"), default="all")
    parser.add_argument("--counts", default=",".join(map(str, PLANTED_COUNTS)), help="Planted counts to run.")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "auto_groups.json")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the slides go (default: a temp dir)."
    )
    args = parser.parse_args(argv)
    size = tuple(int(side) for side in args.size.lower().split("x"))
    counts = [int(count) for count in args.counts.split(",")]
    started, load_at_start = time.perf_counter(), list(os.getloadavg())
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)

        def run(seed_start: int, per_count: int, label: str) -> list[dict]:
            rows = []
            for count in counts:
                for seed in range(seed_start, seed_start + per_count):
                    row = measure_slide(folder, count, seed, size)
                    rows.append(row)
                    print(
                        f"{label} planted {count} seed {seed}: {row['regions']} regions, "
                        f"chosen {row['chosen']}, "
                        f"ARI {row['ari_chosen']:.3f} (oracle {row['ari_oracle']:.3f}), "
                        f"{row['seconds_build']:.1f} + {row['seconds_segment']:.1f} s",
                        flush=True,
                    )
                    for path in folder.glob(f"planted{count}_seed{seed}.*"):
                        path.unlink()
            return rows

        dev_rows = run(DEV_SEED_START, args.dev_seeds, "dev")
        candidates = candidate_table(dev_rows)
        chosen = choose_candidate(candidates)
        default = f"{DEFAULT_CRITERION}@{DEFAULT_TOLERANCE:g}"
        report: dict = {
            "experiment": "auto_groups",
            "commit": git_commit(),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_at_start},
            "data": {
                "generator": "napari_care.core.synthetic.planted_types.build_planted_slide",
                "size_px": list(size),
                "mpp": 0.5,
                "layout": f"one piece of tissue, a mosaic of {PATCHES_PER_TYPE} lobed patches per "
                "planted type",
                "textures": [texture.name for texture in PLANTED_TEXTURES],
                "planted_counts": counts,
                "options": "segment() with SegmentOptions() (default encoder, 224 px at 20x, training-free "
                "CARE regions, n_groups='auto')",
                "ari": "adjusted Rand index of the patches' groups to their majority planted type, over the "
                "patches whose majority truth is tissue",
                "oracle_n": "the planted count",
            },
            "candidates": {
                "criteria": list(CRITERIA),
                "tolerances": list(TOLERANCES),
                "rule": "the smallest N whose score is within tolerance x (max - min) of the best, over "
                f"N = {AUTO_GROUPS_RANGE[0]}..{AUTO_GROUPS_RANGE[1]} (at most the distinct regions and half "
                "the regions)",
                "selection": "highest dev rate of N == planted, then highest dev mean ARI at the chosen N",
            },
            "development": {
                "seeds": list(range(DEV_SEED_START, DEV_SEED_START + args.dev_seeds)),
                "slides": len(dev_rows),
                "candidates": candidates,
                "chosen_candidate": chosen,
                "code_default": default,
                "code_default_is_dev_choice": chosen == default,
                "rows": dev_rows,
            },
        }
        if chosen != default:
            print(
                f"warning: the development slides choose {chosen}, the code's default is {default}",
                flush=True,
            )
        if args.phase == "all":
            test_rows = run(TEST_SEED_START, args.test_seeds, "test")
            report["test"] = {
                "seeds": list(range(TEST_SEED_START, TEST_SEED_START + args.test_seeds)),
                "criterion": default,
                "per_planted_count": per_count_table(test_rows),
                "overall": {
                    "slides": len(test_rows),
                    "exact_rate": float(np.mean([row["chosen"] == row["planted"] for row in test_rows])),
                    "ari_chosen": mean_sd([row["ari_chosen"] for row in test_rows]),
                    "ari_oracle": mean_sd([row["ari_oracle"] for row in test_rows]),
                },
                "rows": test_rows,
            }
    report["timing"] = time_phenotype_step()
    report["seconds_total"] = time.perf_counter() - started
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    seconds = [row["seconds_build"] + row["seconds_segment"] for row in report["development"]["rows"]]
    report["seconds_per_slide_median"] = statistics.median(seconds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.json, "w") as handle:
        json.dump(report, handle, indent=1)
    print_tables(report)
    print(f"\nwrote {args.json} in {report['seconds_total']:.0f} s")
    return report


if __name__ == "__main__":
    main()
