"""GeoJSON exchange at slide scale: seconds and peak Python memory, printed.

- tracing 10,000 regions of a label grid (and the plain alternative, shapely's coverage
  union of cell boxes, for comparison);
- export and import of 10,000 region polygons and of 100,000 per-tile attention features;
- the napari side of the import and export: file objects -> Shapes layer data (one shape per
  ring) and Shapes layer data -> objects, for the same features.

Each step runs twice: timed alone, then under tracemalloc for its peak of Python allocations
(numpy and shapely arrays included, GEOS's own C++ heap not), because tracemalloc slows this
Python-heavy work several fold. Writes ``docs/results/geojson.json``.
Run: ``python benchmarks/bench_geojson.py [--regions N --tiles N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_files import RESULTS, write_result

from napari_care._geojson_reader import annotation_layers
from napari_care._writer import shapes_annotations
from napari_care.core.level0_frame import Level0Frame
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import read_geojson
from napari_care.core.qupath.write import (
    RegionTable,
    care_metadata,
    region_features,
    tile_features,
    write_geojson,
)

T = TypeVar("T")
PATCH_PX = 448.0  # 224 px tiles at 10x on a 20x slide
STEPS: list[dict] = []  # what measure() saw, in order: the results file's rows


def measure(label: str, step: Callable[[], T], subject: str = "") -> T:
    """Run ``step`` twice: once timed, once under tracemalloc for its peak memory; print both."""
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    del result
    tracemalloc.start()
    result = step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label:<48} {seconds:8.2f} s   peak {peak / 2**20:7.1f} MiB")
    STEPS.append(
        {"step": label, "subject": subject, "seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 1)}
    )
    return result


def voronoi_grid(n_regions: int, side: int, seed: int = 0) -> np.ndarray:
    """A side x side label grid of irregular regions (nearest seed), a round tissue outline."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] - side / 2
    tissue = np.hypot(yy, xx) <= side / 2
    seeds = np.zeros((side, side), dtype=bool)
    flat = rng.choice(np.flatnonzero(tissue), n_regions, replace=False)
    seeds.flat[flat] = True
    ids = np.zeros((side, side), dtype=np.int64)
    ids.flat[flat] = np.arange(n_regions)
    _, (rows, cols) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = ids[rows, cols]
    labels[~tissue] = -1
    return labels


def coverage_union(labels: np.ndarray) -> list:
    rows, cols = np.nonzero(labels >= 0)
    ids = labels[rows, cols]
    order = np.argsort(ids, kind="stable")
    rows, cols, ids = rows[order], cols[order], ids[order]
    boxes = shapely.box(cols * PATCH_PX, rows * PATCH_PX, (cols + 1) * PATCH_PX, (rows + 1) * PATCH_PX)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return [shapely.coverage_union_all(part) for part in np.split(boxes, starts[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=10_000)
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "geojson.json")
    parser.add_argument("--no-result", action="store_true", help="print only")
    args = parser.parse_args()
    load_start = list(os.getloadavg())
    side = int(np.sqrt(args.regions * 64 / 0.785))  # ~64 patches per region inside the disc
    labels = voronoi_grid(args.regions, side)
    n_patches = int((labels >= 0).sum())
    print(f"grid {side} x {side}, {n_patches} patches, {len(np.unique(labels[labels >= 0]))} regions")

    polygons = measure(
        "trace regions (label_grid_polygons)",
        lambda: label_grid_polygons(labels, cell_size_px=PATCH_PX),
        "regions",
    )
    reference = measure(
        "for comparison: coverage_union of cell boxes", lambda: coverage_union(labels), "regions"
    )
    assert len(reference) == len(polygons)
    assert shapely.is_valid(np.array(list(polygons.values()), dtype=object)).all()

    region_ids = np.array(sorted(polygons))
    rng = np.random.default_rng(1)
    table = RegionTable(
        region_ids,
        np.bincount(labels[labels >= 0])[region_ids],
        rng.random(len(region_ids)),
        rng.random(len(region_ids)),
        rng.random(len(region_ids)),
        group=rng.integers(0, 12, len(region_ids)),
        roi_ids=(int(region_ids[0]),),
    )
    metadata = care_metadata(encoder="uni2", k=8, mpp=1.0)

    coords = np.stack(np.divmod(np.arange(args.tiles), 400)[::-1], axis=1) * PATCH_PX
    attention = rng.random(args.tiles)
    builders = {
        "regions": lambda: region_features(polygons, table, mpp=0.5, metadata=metadata),
        "tiles": lambda: tile_features(coords, PATCH_PX, {"Attention": attention}),
    }
    sizes = {"regions": len(polygons), "tiles": args.tiles}
    on_disk: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, build in builders.items():
            features = measure("build features", build, name)
            for suffix in (".geojson", ".geojson.gz"):
                path = Path(folder) / f"export{suffix}"
                measure(
                    f"write {suffix}",
                    lambda path=path, features=features: write_geojson(path, features),
                    name,
                )
                print(f"{'':<48} {path.stat().st_size / 2**20:8.1f} MiB on disk")
                on_disk[f"{name} {suffix}"] = round(path.stat().st_size / 2**20, 2)
                back = measure(f"read {suffix}", lambda path=path: read_geojson(path), name)
                assert len(back) == len(features)
            frame = Level0Frame((0.5, 0.5))
            layers, _ = measure(
                "napari layer data",
                lambda back=back, frame=frame: annotation_layers(back, name="bench", frame=frame),
                name,
            )
            data, attributes, _ = layers[0]
            attributes = {
                **attributes,
                "features": pd.DataFrame(attributes["features"]),
            }  # as napari hands it
            again = measure(
                "objects of that Shapes layer",
                lambda data=data, attributes=attributes, frame=frame: shapes_annotations(
                    data, attributes, frame
                ),
                name,
            )
            assert len(again) == len(features)
    if not args.no_result:
        figures = {
            "grid": {"side": side, "patches": n_patches, "regions": len(polygons)},
            "sizes": sizes,
            "steps": STEPS,
            "mib_on_disk": on_disk,
            "memory": "peak Python allocations under tracemalloc (numpy and shapely arrays "
            "included, GEOS's own heap not), in a second run of each step",
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
        }
        print(write_result(args.out, "geojson", figures))


if __name__ == "__main__":
    main()
