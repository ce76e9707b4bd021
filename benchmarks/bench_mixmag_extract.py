"""Extraction cost of mixed-magnification features against 20x tiles alone, on the same slide.

    python benchmarks/bench_mixmag_extract.py [--slide PATH] [--mpp 0.5] [--encoder default]
                                              [--workers 2] [--repeats 2]

Without ``--slide`` it uses the project's offline sample (built once into the cache). Both
runs share one tissue mask and use no feature cache, so every tile is read and encoded:

* 20x alone: :func:`~napari_care.core.tiling.tile_grid` at 0.5 um/px, 224 px tiles, then
  :func:`~napari_care.core.extract.extract_features`;
* mixed magnification: :func:`~napari_care.core.mixmag_features.extract_mixmag` (regions of
  896 px at 20x: 1 tile at 5x, 2x2 at 10x, 4x4 at 20x, each from its nearest level).

Printed per run: tiles encoded, ``read_region`` calls, megapixels decoded, seconds (best of
``--repeats``), and the ratios mixed / 20x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.mixmag_features import extract_mixmag
from napari_care.core.progress import run_to_end
from napari_care.core.slide.handle import open_slide
from napari_care.core.tiling import tile_grid
from napari_care.core.tissue import tissue_mask


class ReadCounter:
    """Counts ``read_region`` calls and the pixels they return (wraps the slide's method)."""

    def __init__(self, slide) -> None:
        self.read_region, self.calls, self.pixels = slide.read_region, 0, 0
        slide.read_region = self

    def __call__(self, location, level, size):
        self.calls += 1
        self.pixels += int(size[0]) * int(size[1])
        return self.read_region(location, level, size)


def timed(run, counter: ReadCounter, repeats: int) -> tuple[object, float, int, int]:
    """Best wall time of ``run()`` over ``repeats``; reads and pixels of one run."""
    best, result = float("inf"), None
    for _ in range(repeats):
        counter.calls = counter.pixels = 0
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return result, best, counter.calls, counter.pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None, help="slide file (default: the offline sample)")
    parser.add_argument("--mpp", type=float, default=None, help="override the slide's mpp")
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--workers", type=int, default=2, help="reader threads")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.slide is None:
        from napari_care.core.samples import offline_sample_path

        args.slide = offline_sample_path()
    encoder = create_encoder(args.encoder)
    with open_slide(args.slide, mpp=args.mpp) as slide:
        started = time.perf_counter()
        tissue = tissue_mask(slide)
        print(
            f"{args.slide.name}: {slide.dimensions[0][0]} x {slide.dimensions[0][1]} px, "
            f"downsamples {[round(d, 2) for d in slide.level_downsamples]}, encoder {args.encoder} "
            f"(D={encoder.embed_dim}), {args.workers} reader threads; tissue mask "
            f"{time.perf_counter() - started:.2f} s (shared)"
        )
        counter = ReadCounter(slide)

        def only_20x():
            grid = tile_grid(slide, mpp=0.5, tile_size_px=224, tissue=tissue)
            return run_to_end(extract_features(slide, grid, encoder, num_workers=args.workers))

        def mixed():
            return run_to_end(extract_mixmag(slide, encoder, tissue=tissue, num_workers=args.workers))

        single, single_s, single_reads, single_px = timed(only_20x, counter, args.repeats)
        mixmag, mixed_s, mixed_reads, mixed_px = timed(mixed, counter, args.repeats)
    tiles_20x, tiles_mixed = len(single), sum(mixmag.tile_counts)
    print(f"{'run':28} {'tiles':>7} {'reads':>7} {'Mpx read':>9} {'seconds':>8} {'tiles/s':>8}")
    print(
        f"{'20x alone':28} {tiles_20x:7d} {single_reads:7d} {single_px / 1e6:9.1f} {single_s:8.2f} "
        f"{tiles_20x / single_s:8.0f}"
    )
    counts = "/".join(str(n) for n in mixmag.tile_counts)
    print(
        f"{'mixed 5x/10x/20x':28} {tiles_mixed:7d} {mixed_reads:7d} {mixed_px / 1e6:9.1f} {mixed_s:8.2f} "
        f"{tiles_mixed / mixed_s:8.0f}   ({counts} tiles, {mixmag.n_regions} regions)"
    )
    print(
        f"ratio mixed / 20x: tiles {tiles_mixed / tiles_20x:.2f}, reads {mixed_reads / single_reads:.2f}, "
        f"pixels {mixed_px / single_px:.2f}, seconds {mixed_s / single_s:.2f}"
    )


if __name__ == "__main__":
    main()
