"""Benchmark patch feature extraction: reading, encoding, end to end, against a CLAM-style loop.

    python benchmarks/bench_extract.py [--slide PATH] [--workers N] [--clam-tiles N]

Without ``--slide`` it writes (once, into ``--workdir``) a synthetic pyramidal TIFF of
40960 x 32768 px at 0.5 um/px with JPEG (YCbCr 4:2:0, quality 80) tiles of 256 px and
H&E-like textures over ~85% of the glass: about 22,000 tissue tiles of 224 px at 20x. The
project's offline sample (16384 x 12288) gives only ~4,000 such tiles, too few for steady
rates, so the benchmark makes its own slide of the same kind, larger.

Figures printed (tiles/s are 224 px tiles at 20x):
- decode ceiling: every file tile under the grid decoded once, in threads, nothing else;
- reading only: this package's reader (blocks, threads, cut, batches), no encoder;
- encoding only: the encoder on ready batches;
- end to end: ``extract_features``;
- CLAM-style: ``openslide.OpenSlide.read_region`` per tile, PIL resize, a per-tile
  ToTensor/Normalize-like transform, one thread, batched encoder;
- peak RSS growth of each phase (sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.progress import run_to_end
from napari_care.core.slide import open_slide
from napari_care.core.tile_reader import iter_tile_batches
from napari_care.core.tiling import tile_grid

SIZE_XY = (40960, 32768)
MPP = 0.5
FILE_TILE = 256
SWATCH = 1024
TISSUE_CLASSES = (1, 2, 4, 6)  # tumour, stroma, necrosis, lymphocytes (fat is mostly white)
REDUCED = (4, 16, 64)  # downsamples of the reduced levels


class PeakRss:
    """Peak resident memory above the start, sampled in a thread (context manager)."""

    def __enter__(self) -> PeakRss:
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _layout(tiles_y: int, tiles_x: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per file tile: tissue or glass (a rounded slab with a glass margin) and a tissue class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:tiles_y, 0:tiles_x] / np.array([tiles_y, tiles_x])[:, None, None]
    tissue = ((yy - 0.5) / 0.48) ** 4 + ((xx - 0.5) / 0.48) ** 4 <= 1.0
    blocks = rng.choice(TISSUE_CLASSES, size=(tiles_y // 4 + 1, tiles_x // 4 + 1))
    classes = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:tiles_y, :tiles_x]
    return tissue, np.where(tissue, classes, 0)


def write_bench_slide(path: Path, seed: int = 0) -> None:
    """Write the synthetic pyramid (level 0 tile by tile; reduced levels as whole arrays)."""
    import tifffile

    from napari_care.core.synthetic_textures import make_swatch

    width, height = SIZE_XY
    tiles_y, tiles_x = height // FILE_TILE, width // FILE_TILE
    _, classes = _layout(tiles_y, tiles_x, seed)
    swatches = {c: make_swatch(c, seed, SWATCH, MPP) for c in (0, *TISSUE_CLASSES)}

    def level0_tiles():
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                oy, ox = (ty * FILE_TILE) % SWATCH, (tx * FILE_TILE) % SWATCH
                yield swatches[classes[ty, tx]][oy : oy + FILE_TILE, ox : ox + FILE_TILE]

    opts = dict(
        tile=(FILE_TILE, FILE_TILE),
        compression="jpeg",
        compressionargs={"level": 80},
        photometric="rgb",  # RGB in; tifffile stores YCbCr 4:2:0 JPEG like scanners do
        subsampling=(2, 2),
        metadata=None,
    )
    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        writer.write(
            level0_tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            subfiletype=0,
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
            **opts,
        )
        for ds in REDUCED:
            side = FILE_TILE // ds if ds <= FILE_TILE else 1
            small = {
                c: s.reshape(SWATCH // ds, ds, SWATCH // ds, ds, 3).mean(axis=(1, 3))
                for c, s in swatches.items()
            }
            level = np.empty((height // ds, width // ds, 3), dtype=np.uint8)
            for ty in range(tiles_y):
                for tx in range(tiles_x):
                    oy, ox = (ty * FILE_TILE // ds) % (SWATCH // ds), (tx * FILE_TILE // ds) % (SWATCH // ds)
                    level[ty * side : (ty + 1) * side, tx * side : (tx + 1) * side] = small[classes[ty, tx]][
                        oy : oy + side, ox : ox + side
                    ]
            writer.write(level, subfiletype=1, **opts)
    os.replace(tmp, path)


def decode_ceiling(path: Path, grid, workers: int) -> tuple[float, int]:
    """Seconds to decode, once each in ``workers`` threads, the file tiles the grid covers (TIFF only)."""
    import tifffile

    from napari_care.core import slide_tiff

    with tifffile.TiffFile(path) as tif:
        fd = slide_tiff.open_fd(path)
        try:
            source = slide_tiff.TiffPageSource(slide_tiff.pyramid_pages(tif)[grid.read_level], fd)
            th, tw = source.tile_height, source.tile_width
            side = int(np.ceil(grid.tile_size_read_px))
            corner = (grid.coords / grid.read_downsample).astype(np.int64)
            needed = set()
            for x0, y0 in corner:
                needed.update(
                    (ty, tx)
                    for ty in range(y0 // th, min(y0 + side - 1, source.height - 1) // th + 1)
                    for tx in range(x0 // tw, min(x0 + side - 1, source.width - 1) // tw + 1)
                )
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(lambda yx: source.decode_tile(*yx), sorted(needed)):
                    pass
            return time.perf_counter() - start, len(needed)
        finally:
            os.close(fd)


def clam_style(path: Path, grid, encoder, n_tiles: int, batch_size: int, *, encode: bool = True) -> float:
    """Seconds for a one-thread OpenSlide loop over the first ``n_tiles`` tiles (with or without encoding)."""
    import openslide
    from PIL import Image

    mean = np.array(encoder.cfg.mean, np.float32)
    std = np.array(encoder.cfg.std, np.float32)
    size_read = round(grid.tile_size_read_px)
    osr = openslide.OpenSlide(str(path))
    start = time.perf_counter()
    batch = []
    for x, y in grid.coords[:n_tiles]:
        img = osr.read_region((int(x), int(y)), grid.read_level, (size_read, size_read)).convert("RGB")
        if img.size != (grid.tile_size_px, grid.tile_size_px):
            img = img.resize((grid.tile_size_px, grid.tile_size_px), Image.Resampling.BILINEAR)
        pixels = np.asarray(img)
        _ = ((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)  # ToTensor + Normalize
        batch.append(pixels)
        if len(batch) == batch_size:
            if encode:
                encoder.encode(np.stack(batch))
            batch = []
    if batch and encode:
        encoder.encode(np.stack(batch))
    elapsed = time.perf_counter() - start
    osr.close()
    return elapsed


def measure_reading(path: Path, grid, workers: int, batch_size: int) -> tuple[float, float, np.ndarray]:
    """Seconds and peak RSS growth (MiB) of reading every tile of the grid, and one batch."""
    with open_slide(path) as slide, PeakRss() as rss:
        start = time.perf_counter()
        sample = None
        batches = iter_tile_batches(
            slide, grid, np.arange(len(grid)), batch_size=batch_size, num_workers=workers
        )
        for _, tiles in batches:
            sample = tiles if sample is None else sample
        seconds = time.perf_counter() - start
    return seconds, rss.growth_mb, sample


def measure_encoding(encoder, sample: np.ndarray) -> float:
    """Tiles per second of the encoder alone on one ready batch (after a warm-up)."""
    encoder.encode(sample)
    reps = max(1, min(32, 2048 // len(sample)))
    start = time.perf_counter()
    for _ in range(reps):
        encoder.encode(sample)
    return reps * len(sample) / (time.perf_counter() - start)


def measure_end_to_end(path: Path, grid, encoder, workers: int, batch_size: int) -> tuple[float, float]:
    """Seconds and peak RSS growth (MiB) of ``extract_features`` over the grid."""
    with open_slide(path) as slide, PeakRss() as rss:
        start = time.perf_counter()
        run_to_end(extract_features(slide, grid, encoder, batch_size=batch_size, num_workers=workers))
        seconds = time.perf_counter() - start
    return seconds, rss.growth_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, help="a slide to use instead of the synthetic one")
    default_workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=None, help="reader threads (default: cores, max 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many for the reading figures")
    parser.add_argument("--clam-tiles", type=int, default=0, help="tiles for the CLAM-style loop (0: all)")
    args = parser.parse_args()

    path = args.slide
    if path is None:
        path = args.workdir / f"bench_{SIZE_XY[0]}x{SIZE_XY[1]}_jpeg.tif"
        if not path.exists():
            args.workdir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            write_bench_slide(path)
            size_mib = path.stat().st_size / 2**20
            print(f"wrote {path} ({size_mib:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    workers = args.workers or min(16, os.cpu_count() or 1)
    encoder = create_encoder(args.encoder)
    print(f"machine: {os.cpu_count()} cores; reader threads {workers}; encoder {encoder.cfg.name!r}")

    with open_slide(path) as slide:
        grid = tile_grid(slide, mpp=args.mpp, tile_size_px=args.tile_size)
        chunks = slide.levels[grid.read_level].chunksize
        width, height = slide.dimensions[0]
        print(
            f"slide: {path.name}, {width}x{height} px at {slide.mpp[0]:.3g} um/px, file tiles "
            f"{chunks[1]}x{chunks[0]}; grid: {len(grid)} tissue tiles of {grid.tile_size_px} px at "
            f"{grid.target_mpp} um/px, read from level {grid.read_level}"
        )
    n = len(grid)

    ceilings, readings = [], []
    for _ in range(max(1, args.repeat)):  # interleaved: both see the same machine load
        ceilings.append(decode_ceiling(path, grid, workers))
        readings.append(measure_reading(path, grid, workers, args.batch_size))
    ceiling_s, n_file_tiles = min(ceilings)
    read_s, read_mib, sample = min(readings, key=lambda r: r[0])
    ceiling = n / ceiling_s
    print(
        f"decode ceiling   : {ceiling:8.0f} tiles/s ({n_file_tiles} file tiles decoded once in {ceiling_s:.1f} s)"
    )
    print(
        f"reading only     : {n / read_s:8.0f} tiles/s ({read_s:.1f} s, {n / read_s / ceiling:.0%} of the "
        f"ceiling, peak RSS +{read_mib:.0f} MiB)"
    )
    print(f"encoding only    : {measure_encoding(encoder, sample):8.0f} tiles/s")
    e2e_s, e2e_mib = measure_end_to_end(path, grid, encoder, workers, args.batch_size)
    print(f"end to end       : {n / e2e_s:8.0f} tiles/s ({e2e_s:.1f} s, peak RSS +{e2e_mib:.0f} MiB)")

    n_clam = min(args.clam_tiles or n, n)
    clam_read = n_clam / clam_style(path, grid, encoder, n_clam, args.batch_size, encode=False)
    clam = n_clam / clam_style(path, grid, encoder, n_clam, args.batch_size)
    print(f"CLAM-style read  : {clam_read:8.0f} tiles/s (first {n_clam} tiles, no encoder)")
    print(f"CLAM-style loop  : {clam:8.0f} tiles/s (first {n_clam} tiles, encoder included)")
    print(f"ratio reading    : {n / read_s / clam_read:.2f}x")
    print(f"ratio end to end : {n / e2e_s / clam:.2f}x (target >= 3x)")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"peak RSS of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
