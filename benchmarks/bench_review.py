"""``napari-care review`` at slide scale: a 100k-patch run against 100k annotation polygons.

Writes, in a temporary folder, what ``napari-care segment`` leaves for one slide (a label grid
of ~100,000 patches of 448 level-0 px in ~1,500 irregular regions, the ROI, the summary and,
unless ``--no-tiles``, one tile object per patch with its attention) and a QuPath-style
GeoJSON of annotation polygons:

- cell-sized star polygons (8 to 14 vertices, 8 to 40 px radius) of three classes over the
  tissue, some of them doubled and shifted so that polygons of one class overlap;
- ``--self-intersecting`` of them (a share) written as bow-ties (two vertices swapped), which
  the reader repairs with ``make_valid``;
- a few large wobbly "Tumor" outlines (500 to 2,000 vertices, spanning tens of patches) that
  hold many of the Tumor cells.

Then it runs :func:`napari_care.core.review.run.iter_review_files` (the generator behind
``review_files`` and the CLI) and prints the sizes, the seconds per stage and in all, the
peak RSS and the load average (the machine is shared: see ``benchmarks/README.md``).

Run: ``python benchmarks/bench_review.py [--patches 100000 --polygons 100000]``; a quick
check: ``--patches 10000 --polygons 5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage

from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.write import (
    RegionTable,
    region_features,
    roi_features,
    tile_features,
    write_geojson,
)

PATCH_PX = 448.0  # 224 px tiles at 10x on a 20x slide
CELL_CLASSES = {"Tumor": [200, 0, 0], "Lymphocyte": [160, 90, 160], "Stroma": [150, 200, 150]}


def region_labels(n_patches: int, patches_per_region: int = 64, seed: int = 0) -> np.ndarray:
    """A 5:3 label grid with ~``n_patches`` tissue cells in an elliptic outline, Voronoi regions."""
    rng = np.random.default_rng(seed)
    rows = int(np.sqrt(n_patches / (0.785 * 5 / 3)))
    cols = int(rows * 5 / 3)
    yy, xx = np.mgrid[0:rows, 0:cols]
    tissue = ((yy - rows / 2) / (rows / 2)) ** 2 + ((xx - cols / 2) / (cols / 2)) ** 2 <= 1
    n_regions = max(1, int(tissue.sum()) // patches_per_region)
    flat = rng.choice(np.flatnonzero(tissue), n_regions, replace=False)
    seeds = np.zeros(tissue.shape, dtype=bool)
    seeds.flat[flat] = True
    ids = np.zeros(tissue.shape, dtype=np.int64)
    ids.flat[flat] = np.arange(n_regions)
    _, (near_r, near_c) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = ids[near_r, near_c]
    labels[~tissue] = -1
    return labels


def write_run(folder: Path, labels: np.ndarray, *, tiles: bool, seed: int = 1) -> Path:
    """``<stem>.regions.geojson`` and ``<stem>.care.json`` for ``labels`` (ROI: 6 central regions)."""
    rng = np.random.default_rng(seed)
    polygons = label_grid_polygons(labels, cell_size_px=PATCH_PX)
    region_ids = np.array(sorted(polygons))
    n_patches = np.bincount(labels[labels >= 0])[region_ids]
    a = rng.random(len(region_ids))
    a /= a.sum()
    centre = np.array(labels.shape) // 2
    near_centre = {int(labels[centre[0] + dr, centre[1] + dc]) for dr in (-4, 0, 4) for dc in (-6, 6)}
    roi = tuple(sorted(near_centre - {-1}))
    groups = rng.integers(0, 12, len(region_ids))
    table = RegionTable(region_ids, n_patches, a, a, a, group=groups, roi_ids=roi)
    objects = region_features(polygons, table) + roi_features(polygons, roi, table=table)
    if tiles:
        rows, cols = np.nonzero(labels >= 0)
        coords = np.stack([cols, rows], axis=1) * PATCH_PX
        region = labels[rows, cols]
        attention = a[np.searchsorted(region_ids, region)] / n_patches[np.searchsorted(region_ids, region)]
        objects += tile_features(coords, PATCH_PX, {"CARE attention": attention, "CARE region id": region})
    write_geojson(folder / "slide.regions.geojson", objects)
    summary = folder / "slide.care.json"
    summary.write_text(json.dumps({"software": "napari-care", "patch_size_level0": PATCH_PX}))
    return summary


def star_polygons(centres: np.ndarray, radius: np.ndarray, n_vertices: int, rng) -> np.ndarray:
    """``[N, n_vertices + 1, 2]`` closed star-shaped rings around ``centres``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, (len(centres), n_vertices)), axis=1)
    radii = radius[:, None] * rng.uniform(0.6, 1.0, (len(centres), n_vertices))
    xy = centres[:, None, :] + radii[..., None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return np.concatenate([xy, xy[:, :1]], axis=1)


def annotation_features(labels: np.ndarray, n_polygons: int, share_invalid: float, seed: int = 2):
    """GeoJSON Features: cells of three classes (some overlapping, some bow-ties), big tumour outlines."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(labels >= 0)
    n_big = max(1, min(40, n_polygons // 2500))
    n_cells = n_polygons - n_big
    features, n_invalid = [], 0
    # Big tumour outlines around random tissue cells, radius 5 to 25 patches.
    for k in range(n_big):
        i = rng.integers(len(rows))
        centre = np.array([cols[i] + 0.5, rows[i] + 0.5]) * PATCH_PX
        n_vertices = int(rng.integers(500, 2000))
        angle = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        wobble = 1 + 0.15 * np.sin(5 * angle + k) + 0.05 * np.sin(23 * angle)
        radius = rng.uniform(5, 25) * PATCH_PX * wobble[:, None]
        xy = centre + radius * np.stack([np.cos(angle), np.sin(angle)], 1)
        features.append(_feature(np.vstack([xy, xy[:1]]), "Tumor"))
    # Cells: anywhere in the tissue, 8 to 40 px radius; 2 % doubled and shifted (overlaps).
    pick = rng.integers(len(rows), size=n_cells)
    centres = (np.stack([cols[pick], rows[pick]], axis=1) + rng.random((n_cells, 2))) * PATCH_PX
    doubled = rng.random(n_cells) < 0.02
    centres[doubled] = centres[np.flatnonzero(doubled) - 1] + rng.normal(0, 10, (int(doubled.sum()), 2))
    radius = rng.uniform(8, 40, n_cells)
    names = np.array(list(CELL_CLASSES))[rng.integers(len(CELL_CLASSES), size=n_cells)]
    invalid = rng.random(n_cells) < share_invalid
    vertex_counts = rng.integers(8, 15, size=n_cells)
    for n_vertices in range(8, 15):
        batch = np.flatnonzero(vertex_counts == n_vertices)
        rings = star_polygons(centres[batch], radius[batch], n_vertices, rng)
        bow = invalid[batch]
        rings[bow, 1], rings[bow, 3] = rings[bow, 3].copy(), rings[bow, 1].copy()  # a bow-tie
        n_invalid += int((~shapely.is_valid(shapely.polygons(np.round(rings, 2)))).sum())  # as written
        features.extend(_feature(ring, str(name)) for ring, name in zip(rings, names[batch], strict=True))
    return features[:n_polygons], n_invalid


def _feature(ring: np.ndarray, class_name: str) -> dict:
    color = CELL_CLASSES.get(class_name, [200, 0, 0])
    classification = {"name": class_name, "color": color}
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]},
        "properties": {"objectType": "annotation", "classification": classification},
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def review(folder: Path, include_disjoint: bool) -> None:
    """Run the review of ``folder``'s files (in a fresh process: its peak RSS is the review's)."""
    from napari_care.core.progress import run_to_end

    try:
        from napari_care.core.review.run import iter_review_files
    except ImportError:  # before the generator: time review_files, one stage
        from napari_care.core.review.run import review_files

        def iter_review_files(*args, **kwargs):
            return (yield from iter([])) or review_files(*args, **kwargs)

    load_before = os.getloadavg()
    stage_start: dict[str, float] = {}
    counts: dict[str, int] = {}

    def on_progress(report) -> None:
        stage_start.setdefault(report.stage, time.perf_counter())
        counts[report.stage] = counts.get(report.stage, 0) + 1

    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run_to_end(
            iter_review_files(
                folder / "slide.care.json",
                folder / "annotations.geojson",
                folder / "review.csv",
                include_disjoint=include_disjoint,
            ),
            on_progress,
        )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stages = list(stage_start.items())
    ends = [began for _, began in stages[1:]] + [start + seconds]
    for (stage, began), ended in zip(stages, ends[-len(stages) :] if stages else [], strict=True):
        print(f"  stage {stage:<20} {ended - began:7.2f} s  ({counts[stage]} progress reports)")
    print(
        f"review: {len(rows):,} rows in {seconds:.2f} s (CPU {cpu:.2f} s), peak RSS {peak_rss_mib():,.0f} MiB"
    )
    print(f"warnings: {len(caught)}" + "".join(f"\n  {w.message}" for w in caught[:3]))
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000, help="tissue patches of the run (about)")
    parser.add_argument("--polygons", type=int, default=100_000, help="annotation polygons")
    parser.add_argument("--self-intersecting", type=float, default=0.02, help="share of bow-tie polygons")
    parser.add_argument("--no-tiles", action="store_true", help="no tile objects in the regions file")
    parser.add_argument("--all-regions", action="store_true", help="also rows for disjoint regions")
    parser.add_argument("--review-only", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.review_only is not None:
        review(args.review_only, args.all_regions)
        return

    labels = region_labels(args.patches)
    print(
        f"run: grid {labels.shape[1]} x {labels.shape[0]} cells of {PATCH_PX:g} px "
        f"(slide {labels.shape[1] * PATCH_PX:,.0f} x {labels.shape[0] * PATCH_PX:,.0f} level-0 px), "
        f"{int((labels >= 0).sum()):,} patches, {len(np.unique(labels[labels >= 0])):,} regions, "
        f"tiles {'no' if args.no_tiles else 'yes'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_run(folder, labels, tiles=not args.no_tiles)
        features, n_invalid = annotation_features(labels, args.polygons, args.self_intersecting)
        annotations = folder / "annotations.geojson"
        with open(annotations, "w", encoding="utf-8") as handle:
            json.dump({"type": "FeatureCollection", "features": features}, handle)
        print(
            f"annotations: {len(features):,} polygons ({n_invalid:,} self-intersecting), "
            f"{annotations.stat().st_size / 2**20:.1f} MiB; regions file "
            f"{(folder / 'slide.regions.geojson').stat().st_size / 2**20:.1f} MiB "
            f"(both written in {time.perf_counter() - start:.1f} s)"
        )
        del features
        child = [sys.executable, __file__, "--review-only", str(folder)]
        child += ["--all-regions"] * args.all_regions
        subprocess.run(child, check=True)


if __name__ == "__main__":
    main()
