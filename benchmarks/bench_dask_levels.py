"""napari's field reads through the slide's dask levels against the same reads through ``TiledLevel``.

    python benchmarks/bench_dask_levels.py [SLIDE ...] [--fields 30] [--json docs/results/dask_levels.json]

napari does not read 256-px pieces: it asks a multiscale layer for the whole visible field at
one level, ``np.asarray(level[y0:y1, x0:x1])``. This script reads full-screen fields (1920 x
1080 level pixels, or the whole level when it is smaller) at random places of every level,
each from an empty tile cache (the file's tiles decoded again; the file itself is in the page
cache after the first pass, so this times decoding and overhead, not the disk) and again with
the tiles cached (a repaint), through

- ``TiledLevel`` (what napari was handed before: numpy-style slicing over the tile cache, the
  tiles of one read decoded in the slide's thread pool), and
- ``Slide.levels[i]``, the dask array (``da.from_array`` chunked on the file's tiles: one task
  per tile), computed as napari computes it (dask's default threaded scheduler).

The two are interleaved field by field, the order alternating. Printed and written to
``--json``: per slide and level the median and 90th-percentile milliseconds of each and the
ratio dask / TiledLevel (target: at most 1.2), the level's size and tile count, and the load
average. Default slides: the 20 cohort slides' first (36864 x 27648, 512-px tiles) and the
gigapixel benchmark slide when ``make_gigapixel.py`` has built it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings
from result_files import RESULTS, write_result

from napari_care.core.slide.handle import open_slide

FIELD = (1080, 1920)  # rows, columns: a full-screen field in level pixels
DEFAULT_SLIDES = [
    Path.home() / ".cache" / "napari_care" / "bench_cohort" / "slides_36864x27648" / "slide00.ome.tif",
]


def gigapixel_slides() -> list[Path]:
    """The gigapixel benchmark slides already built (``make_gigapixel.py``), if any."""
    from make_gigapixel import DEFAULT_OUT  # a sibling script: benchmarks/ is on sys.path

    return sorted(DEFAULT_OUT.glob("gigapixel_*.svs")) if DEFAULT_OUT.is_dir() else []


def fields(height: int, width: int, count: int, rng: np.random.Generator) -> list[tuple[slice, slice]]:
    rows, cols = min(FIELD[0], height), min(FIELD[1], width)
    ys = rng.integers(0, height - rows + 1, count)
    xs = rng.integers(0, width - cols + 1, count)
    return [(slice(int(y), int(y) + rows), slice(int(x), int(x) + cols)) for y, x in zip(ys, xs, strict=True)]


def spread_ms(values: list[float]) -> dict[str, float]:
    return {
        "median": 1000 * statistics.median(values),
        "p90": 1000 * float(np.percentile(values, 90)),
    }


def bench_slide(path: Path, count: int) -> dict:
    rng = np.random.default_rng(0)
    out = {"slide": path.name, "levels": []}
    with open_slide(path) as slide:
        cache = slide._cache
        out["cache_bytes"] = cache.max_bytes
        for index, (tiled, dasky) in enumerate(zip(slide.tiled_levels, slide.levels, strict=True)):
            if index >= slide.file_level_count:
                break  # the levels made by 2x averaging are not the file's tiles
            times = {"tiled_cold": [], "dask_cold": [], "tiled_warm": [], "dask_warm": []}
            same = True
            for number, (rows, cols) in enumerate(fields(tiled.height, tiled.width, count, rng)):
                order = (
                    (("tiled", tiled), ("dask", dasky))
                    if number % 2 == 0
                    else (("dask", dasky), ("tiled", tiled))
                )
                pixels = {}
                for name, level in order:
                    cache.clear()
                    started = time.perf_counter()
                    pixels[name] = np.asarray(level[rows, cols])
                    times[f"{name}_cold"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    np.asarray(level[rows, cols])
                    times[f"{name}_warm"].append(time.perf_counter() - started)
                same = same and np.array_equal(pixels["tiled"], pixels["dask"])
            figures = {name: spread_ms(values) for name, values in times.items()}
            row = {
                "level": index,
                "size": [tiled.width, tiled.height],
                "tile": [tiled.tile_width, tiled.tile_height],
                "tiles": tiled.tiles_x * tiled.tiles_y,
                "fields": count,
                "same_pixels": same,
                **figures,
                "ratio_cold": figures["dask_cold"]["median"] / figures["tiled_cold"]["median"],
                "ratio_warm": figures["dask_warm"]["median"] / figures["tiled_warm"]["median"],
            }
            out["levels"].append(row)
            print(
                f"{path.name} level {index} ({tiled.width} x {tiled.height}, {row['tiles']:,} tiles): "
                f"cold TiledLevel {figures['tiled_cold']['median']:.1f} ms, dask "
                f"{figures['dask_cold']['median']:.1f} ms ({row['ratio_cold']:.2f}x); warm "
                f"{figures['tiled_warm']['median']:.1f} ms vs {figures['dask_warm']['median']:.1f} ms "
                f"({row['ratio_warm']:.2f}x); same pixels {same}",
                flush=True,
            )
    out["bytes_on_disk"] = path.stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", nargs="*", type=Path)
    parser.add_argument("--fields", type=int, default=30, help="random fields per level")
    parser.add_argument("--json", type=Path, default=RESULTS / "dask_levels.json")
    args = parser.parse_args()
    slides = args.slides or [p for p in DEFAULT_SLIDES if p.is_file()] + gigapixel_slides()
    if not slides:
        raise SystemExit("no slide: pass one, or run bench_cohort.py / make_gigapixel.py first")
    load_before = list(os.getloadavg())
    results = [bench_slide(path, args.fields) for path in slides]
    worst = max(level["ratio_cold"] for result in results for level in result["levels"])
    path = write_result(
        args.json,
        "dask_levels",
        {
            "field_px": [FIELD[1], FIELD[0]],
            "load_average_before": load_before,
            "slides": results,
            "target_ratio": 1.2,
            "worst_ratio_cold": worst,
        },
    )
    print(f"worst cold ratio dask / TiledLevel {worst:.2f} (target <= 1.2); wrote {path}")


if __name__ == "__main__":
    main()
