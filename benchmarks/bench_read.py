"""Random region reads: napari_care's slide handle against OpenSlide, on the same regions.

    python benchmarks/bench_read.py [SLIDE] [--regions 2000] [--size 256] [--seed 0] [--repeat 1]

SLIDE defaults to ../shared/data/slides/CMU-1-Small-Region.svs (JPEG tiles). Each path
starts from a freshly opened slide, so its tile cache (and OpenSlide's) starts cold. Prints
reads per second, the ratio to OpenSlide's single-threaded rate, the CPU milliseconds per
read (all threads; what a read costs even on a machine shared with other work) and the
load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np
import openslide

from napari_care.core.slide.handle import open_slide

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
Region = tuple[int, int]


def random_regions(width: int, height: int, size_px: int, count: int, seed: int) -> list[Region]:
    """``count`` level-0 (x, y) corners of size_px x size_px regions inside the slide."""
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, width - size_px + 1, count)
    ys = rng.integers(0, height - size_px + 1, count)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def openslide_reads(path: Path, regions: list[Region], size_px: int, cache: bool = True) -> list[np.ndarray]:
    with openslide.OpenSlide(str(path)) as osr:
        if not cache:
            osr.set_cache(openslide.OpenSlideCache(0))
        return [np.asarray(osr.read_region(xy, 0, (size_px, size_px)))[:, :, :3] for xy in regions]


def slide_reads(
    path: Path, regions: list[Region], size_px: int, threads: int = 1, cache: bool = True
) -> list[np.ndarray]:
    with open_slide(path) as slide:
        if not cache:
            slide._cache.max_bytes = 0  # every read decodes its tiles: raw decode throughput
        if threads == 1:
            return [slide.read_region(xy, 0, (size_px, size_px)) for xy in regions]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda xy: slide.read_region(xy, 0, (size_px, size_px)), regions))


def tiffslide_reads(path: Path, regions: list[Region], size_px: int) -> list[np.ndarray]:
    import tiffslide

    with tiffslide.TiffSlide(str(path)) as ts:
        return [
            np.asarray(ts.read_region(xy, 0, (size_px, size_px), as_array=True))[:, :, :3] for xy in regions
        ]


def dask_reads(path: Path, regions: list[Region], size_px: int, batch: int = 1) -> list[np.ndarray]:
    with open_slide(path) as slide:
        level0 = slide.levels[0]
        crops = [level0[y : y + size_px, x : x + size_px] for x, y in regions]
        if batch == 1:
            return [crop.compute(scheduler="threads") for crop in crops]
        out: list[np.ndarray] = []
        for start in range(0, len(crops), batch):
            out.extend(dask.compute(*crops[start : start + batch], scheduler="threads"))
        return out


def tiled_reads(path: Path, regions: list[Region], size_px: int) -> list[np.ndarray]:
    with open_slide(path) as slide:
        level0 = slide.tiled_levels[0]
        return [level0[y : y + size_px, x : x + size_px] for x, y in regions]


def timed(read: Callable[[], list[np.ndarray]]) -> tuple[float, float, list[np.ndarray]]:
    """Wall seconds, process CPU seconds and the pixels of one run."""
    start, cpu = time.perf_counter(), time.process_time()
    pixels = read()
    return time.perf_counter() - start, time.process_time() - cpu, pixels


def load_average() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--regions", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="region side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each contender; the best counts")
    args = parser.parse_args()
    if not args.slide.is_file():
        parser.error(f"{args.slide}: no such file (pass a JPEG slide path)")
    warnings.simplefilter("ignore", UserWarning)  # a missing mpp does not matter here

    with open_slide(args.slide) as slide:
        width, height = slide.dimensions[0]
        tile_w, tile_h = slide.metadata()["tile_sizes"][0]
        compression_hint = slide.properties.get("tiff.ImageDescription", "")[:60].replace("\r\n", " ")
    regions = random_regions(width, height, args.size, args.regions, args.seed)
    args.slide.read_bytes()  # the OS page cache holds the file for every contender alike
    print(f"{args.slide.name}: {width}x{height}, tiles {tile_w}x{tile_h}, {compression_hint!r}")
    print(
        f"{len(regions)} random {args.size}x{args.size} reads at level 0, seed {args.seed}; "
        f"{os.cpu_count()} cores, load average {load_average()}"
    )

    contenders: list[tuple[str, Callable[[], list[np.ndarray]]]] = [
        (
            "openslide.OpenSlide.read_region, 1 thread",
            lambda: openslide_reads(args.slide, regions, args.size),
        ),
        ("Slide.read_region, 1 thread", lambda: slide_reads(args.slide, regions, args.size)),
        (
            "Slide.levels[0] as napari reads it (TiledLevel slice)",
            lambda: tiled_reads(args.slide, regions, args.size),
        ),
        ("Slide.read_region, 2 threads", lambda: slide_reads(args.slide, regions, args.size, threads=2)),
        (
            "openslide, no tile cache, 1 thread",
            lambda: openslide_reads(args.slide, regions, args.size, cache=False),
        ),
        (
            "Slide.read_region, no tile cache, 1 thread",
            lambda: slide_reads(args.slide, regions, args.size, cache=False),
        ),
        ("Slide.levels[0][...].compute(threads), 1 by 1", lambda: dask_reads(args.slide, regions, args.size)),
        (
            "Slide.levels[0][...], dask.compute 64 at once",
            lambda: dask_reads(args.slide, regions, args.size, 64),
        ),
    ]
    if importlib.util.find_spec("tiffslide") is not None:  # pip install tiffslide
        contenders.insert(
            1,
            (
                "tiffslide.TiffSlide.read_region, 1 thread",
                lambda: tiffslide_reads(args.slide, regions, args.size),
            ),
        )
    reference: list[np.ndarray] | None = None
    reference_rate = 0.0
    best_seconds = {name: float("inf") for name, _ in contenders}
    best_cpu = dict(best_seconds)
    for _ in range(args.repeat - 1):  # interleaved, so a busy moment hurts every contender alike
        for name, read in contenders:
            seconds, cpu, _ = timed(read)
            best_seconds[name], best_cpu[name] = min(best_seconds[name], seconds), min(best_cpu[name], cpu)
    for name, read in contenders:
        seconds, cpu, pixels = timed(read)
        rate = len(regions) / min(seconds, best_seconds[name])
        cpu_ms = 1e3 * min(cpu, best_cpu[name]) / len(regions)
        if reference is None:
            reference, reference_rate = pixels, rate
            same = "reference"
        else:
            diff = max(
                int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(pixels, reference, strict=True)
            )
            same = "identical pixels" if diff == 0 else f"max |diff| {diff} vs OpenSlide"
        print(
            f"{name:<48} {rate:9.0f} reads/s  {rate / reference_rate:5.2f}x OpenSlide  "
            f"{cpu_ms:6.3f} CPU-ms/read  ({same})"
        )
    print(
        f"load average {load_average()}; target: Slide.read_region >= 1.5x OpenSlide's single-threaded rate"
    )


if __name__ == "__main__":
    main()
