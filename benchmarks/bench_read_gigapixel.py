"""Uncached reading on the gigapixel slide: napari_care's reader against OpenSlide, no tile read twice.

    python benchmarks/bench_read_gigapixel.py [SLIDE] [--regions 1000] [--grid-tiles 600] [--repeat 3]

SLIDE defaults to the slide ``make_gigapixel.py`` builds (built first when missing). Two
workloads, each run ``--repeat`` times, interleaved, every run on a freshly opened slide:

- random: 256-px level-0 regions, one per randomly drawn disjoint 2x2 block of file tiles
  (a random offset inside it), so no file tile is read twice and no cache can hit;
  each repeat draws other blocks;
- extraction order: a contiguous run of the 20x tile grid (256 px at 0.5 um/px, 512 px at
  level 0) read by ``iter_tile_batches`` as feature extraction does, against OpenSlide's
  ``read_region`` + PIL resize per tile (CLAM-style); each repeat takes another run.

The project's tile cache keeps its default limit (printed in bytes); its hits are counted
and printed (they must be 0). Prints the load average, whether the file fits in RAM (the OS
page cache is not dropped: it would disturb the others sharing this machine; the file is
read once beforehand so every contender finds it in memory alike), and writes
``docs/results/read_gigapixel.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from napari_care.core.slide.handle import open_slide
from napari_care.core.tile_reader import iter_tile_batches
from napari_care.core.tiling import tile_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_gigapixel
from result_files import RESULTS, write_result
from slide_files import slide_file_record, warm_page_cache

RESULT = RESULTS / "read_gigapixel.json"


def disjoint_regions(width: int, height: int, tile_px: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` (x, y) corners of tile_px regions, each inside its own 2x2 block of file tiles."""
    rng = np.random.default_rng(seed)
    blocks_x, blocks_y = (width // tile_px - 1) // 2, (height // tile_px - 1) // 2
    picked = rng.choice(blocks_x * blocks_y, count, replace=False)
    bx, by = picked % blocks_x, picked // blocks_x
    dx, dy = rng.integers(0, tile_px, count), rng.integers(0, tile_px, count)
    return [(int(x), int(y)) for x, y in zip(2 * tile_px * bx + dx, 2 * tile_px * by + dy, strict=True)]


class HitCounter:
    """Counts the tile cache's hits and misses of one slide (wraps its ``get``)."""

    def __init__(self, slide) -> None:
        self.hits = self.lookups = 0
        cache = slide._cache
        original = cache.get

        def counted(key):
            tile = original(key)
            self.lookups += 1
            self.hits += tile is not None
            return tile

        cache.get = counted


def project_random(path: Path, regions, hits: list[int]) -> None:
    with open_slide(path) as slide:
        counter = HitCounter(slide)
        for xy in regions:
            slide.read_region(xy, 0, (256, 256))
        hits.append(counter.hits)


def openslide_random(path: Path, regions, hits: list[int]) -> None:
    with openslide.OpenSlide(str(path)) as osr:
        for xy in regions:
            np.asarray(osr.read_region(xy, 0, (256, 256)))


def project_grid(path: Path, grid, rows: np.ndarray, workers: int, hits: list[int]) -> None:
    with open_slide(path) as slide:
        counter = HitCounter(slide)
        for _ in iter_tile_batches(slide, grid, rows, batch_size=64, num_workers=workers):
            pass
        hits.append(counter.hits)


def openslide_grid(path: Path, coords: np.ndarray) -> None:
    with openslide.OpenSlide(str(path)) as osr:
        for x, y in coords:
            region = osr.read_region((int(x), int(y)), 0, (512, 512)).convert("RGB")
            np.asarray(region.resize((256, 256), Image.Resampling.BILINEAR))


CORES_BUSY: dict[int, float] = {}  # id of a timed run -> its CPU seconds over wall seconds


def timed(run: Callable[[], None]) -> float:
    """Wall seconds of ``run``; its cores busy (process CPU / wall) go to :data:`CORES_BUSY`."""
    start, cpu = time.perf_counter(), time.process_time()
    run()
    seconds = time.perf_counter() - start
    CORES_BUSY[len(CORES_BUSY)] = (time.process_time() - cpu) / seconds
    return seconds


def summary(counts: int, seconds: list[float]) -> dict:
    rates = [counts / s for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path)
    parser.add_argument("--regions", type=int, default=1000, help="random 256-px reads per run")
    parser.add_argument("--grid-tiles", type=int, default=600, help="20x grid tiles per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-result", action="store_true", help="do not write docs/results/")
    args = parser.parse_args()
    path = args.slide or make_gigapixel.build_gigapixel(make_gigapixel.DEFAULT_OUT).svs
    if not path.is_file():
        parser.error(f"{path}: no such file (pass a slide, or run benchmarks/make_gigapixel.py)")
    warm_page_cache(path)
    with open_slide(path) as slide:
        width, height = slide.dimensions[0]
        cache_limit = slide._cache.max_bytes
        grid = tile_grid(slide, mpp=0.5, tile_size_px=256)
        backend, vendor = slide.backend, slide.vendor
    n_grid = min(args.grid_tiles, len(grid) // max(1, args.repeat))
    slide_file = slide_file_record(path, width, height) | {"grid_tiles_20x": len(grid)}
    file_bytes = slide_file["bytes"]
    print(
        f"{path.name}: {width}x{height} px, {file_bytes:,} bytes ({file_bytes / 2**30:.2f} GiB), "
        f"{vendor} read by {backend}; RAM {slide_file['ram_bytes'] / 2**30:.1f} GiB: the file "
        f"{'fits in' if slide_file['fits_in_ram'] else 'exceeds'} RAM and is in the page cache for every "
        f"contender (not dropped); 20x grid {len(grid)} tissue tiles of 512 level-0 px"
    )
    print(f"tile cache limit {cache_limit:,} bytes; {os.cpu_count()} cores; load average {os.getloadavg()}")

    names = ("openslide random", "project random", "openslide grid", "project grid 1", "project grid 2")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cores: dict[str, list[float]] = {name: [] for name in names}
    hits: list[int] = []
    for run in range(args.repeat):
        regions = disjoint_regions(width, height, 256, args.regions, seed=run)
        start = (run * len(grid)) // args.repeat
        rows = np.arange(start, start + n_grid)
        seconds["openslide random"].append(timed(lambda r=regions: openslide_random(path, r, hits)))
        seconds["project random"].append(timed(lambda r=regions: project_random(path, r, hits)))
        seconds["openslide grid"].append(timed(lambda r=rows: openslide_grid(path, grid.coords[r])))
        seconds["project grid 1"].append(timed(lambda r=rows: project_grid(path, grid, r, 1, hits)))
        seconds["project grid 2"].append(timed(lambda r=rows: project_grid(path, grid, r, 2, hits)))
        for name, busy in zip(names, list(CORES_BUSY.values())[-len(names) :], strict=True):
            cores[name].append(busy)
        print(f"  run {run + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()))
    figures = {
        name: summary(args.regions if "random" in name else n_grid, runs)
        | {"cores_busy": statistics.median(cores[name])}
        for name, runs in seconds.items()
    }
    ratios = {
        "random: project / openslide (target >= 1.5)": figures["project random"]["median"]
        / figures["openslide random"]["median"],
        "grid: project 1 reader thread / openslide (target >= 1.5)": figures["project grid 1"]["median"]
        / figures["openslide grid"]["median"],
        "grid: project 2 reader threads / 1 (target >= 1.8)": figures["project grid 2"]["median"]
        / figures["project grid 1"]["median"],
        # one reader thread already decodes a block's file tiles on the decode pool, so it keeps
        # more than a core busy: on these cores no thread count can beat this ratio
        "grid: ceiling of 2 threads / 1 on this machine (cores / cores busy with 1 thread)": (
            os.cpu_count() / figures["project grid 1"]["cores_busy"]
        ),
    }
    for name, figure in figures.items():
        unit = "reads/s" if "random" in name else "tiles/s"
        print(
            f"{name:<18} {figure['median']:8.0f} {unit} (min {figure['min']:.0f}, max {figure['max']:.0f}; "
            f"{figure['cores_busy']:.2f} cores busy)"
        )
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}")
    print(f"tile cache hits {sum(hits)} (limit {cache_limit:,} bytes); load average {os.getloadavg()}")
    if not args.no_result:
        document = {
            "slide": slide_file,
            "workloads": {
                "random": f"{args.regions} 256-px level-0 reads per run, disjoint 2x2 file-tile blocks",
                "grid": f"{n_grid} contiguous 20x grid tiles per run (iter_tile_batches / OpenSlide+PIL)",
            },
            "repeats": args.repeat,
            "tile_cache_limit_bytes": cache_limit,
            "tile_cache_hits": sum(hits),
            "figures": figures,
            "ratios": ratios,
        }
        print(f"wrote {write_result(RESULT, 'read_gigapixel', document)}")


if __name__ == "__main__":
    main()
