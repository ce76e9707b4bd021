"""How long the offline sample takes to build, and how big it is.

Usage: python benchmarks/bench_sample_build.py [--width 16384 --height 12288 --layout default]

Prints wall and CPU seconds of :func:`build_synthetic_slide` (the offline sample's
default size unless told otherwise), the file size, the pyramid and the tissue shares.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_care.core.synthetic.slides import TISSUE_TYPES, build_synthetic_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--height", type=int, default=12288)
    parser.add_argument("--layout", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.ome.tif"
        wall, cpu = time.perf_counter(), time.process_time()
        slide = build_synthetic_slide(
            path,
            width=args.width,
            height=args.height,
            layout=args.layout,
            seed=args.seed,
            workers=args.workers,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        megabytes = path.stat().st_size / 1e6
        with tifffile.TiffFile(path) as tif:
            levels = [level.shape[:2][::-1] for level in tif.series[0].levels]
    print(
        f"build {args.width} x {args.height} ({args.layout}, seed {args.seed}): "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU, {megabytes:.1f} MB"
    )
    print(f"levels (w, h): {levels}")
    print(f"throughput: {args.width * args.height / 1e6 / wall:.1f} Mpx/s of level 0")
    shares = np.bincount(slide.labels.ravel(), minlength=len(TISSUE_TYPES)) / slide.labels.size
    print(
        "tissue shares: "
        + ", ".join(f"{name} {share:.1%}" for name, share in zip(TISSUE_TYPES, shares, strict=True))
    )


if __name__ == "__main__":
    main()
