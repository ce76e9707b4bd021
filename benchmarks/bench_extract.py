"""Benchmark patch feature extraction: reading, encoding, end to end, against CLAM-style and TIAToolbox loops.

    python benchmarks/bench_extract.py [--slide PATH] [--workers N] [--compare-tiles N] [--tia-python PY]

Without ``--slide`` it writes (once, into ``--workdir``) a synthetic pyramidal TIFF of
40960 x 32768 px at 0.5 um/px with JPEG (YCbCr 4:2:0, quality 80) tiles of 256 px and
H&E-like textures over ~85% of the glass: about 22,700 tissue tiles of 224 px at 20x.

Figures printed (tiles/s are 224 px tiles at 20x; each phase also gives CPU-ms per tile,
cores busy, peak RSS growth and the load average, since the machine may be shared):
- decode ceiling: every file tile under the grid decoded once, in threads, nothing else;
- reading only: this package's reader (blocks, threads, cut, batches), no encoder;
- encoding only: the encoder on ready batches (~16 batches from across the slide, 3 passes);
- end to end: ``extract_features``, as a share of the slower stage and of the bound that
  two stages sharing the same cores can reach, 1 / (1/read + 1/encode);
- CLAM-style: ``openslide.OpenSlide.read_region`` per tile, PIL, a per-tile
  ToTensor/Normalize-like transform, one thread, batched encoder;
- TIAToolbox: its ``PointsPatchExtractor`` on the same tiles, same encoder, run with the
  Python of a separate venv (``--tia-python``; "not installed" and why when absent).
The comparisons run on a contiguous run of ``--compare-tiles`` tiles mid-slide, for the
project too, so every ratio compares the same tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.progress import run_to_end
from napari_care.core.slide.handle import open_slide
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


class Timing:
    """Wall seconds, process CPU seconds, peak RSS growth and load average of a phase (context manager).

    CPU seconds count every thread of the process: on a machine shared with other work
    they say what the phase costs, where wall-clock rates also say how busy the machine was.
    """

    def __init__(self, tiles: int) -> None:
        self.tiles = tiles
        self.seconds = self.cpu_seconds = self.rss_growth_mb = 0.0
        self.load = os.getloadavg()[0]
        self.note = ""

    def __enter__(self) -> Timing:
        self._rss = PeakRss().__enter__()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        self._rss.__exit__(*exc)
        self.rss_growth_mb = self._rss.growth_mb
        self.load = max(self.load, os.getloadavg()[0])

    @property
    def rate(self) -> float:
        """Tiles per wall-clock second."""
        return self.tiles / self.seconds

    @property
    def cpu_per_tile_ms(self) -> float:
        """CPU milliseconds per tile, all threads together."""
        return 1e3 * self.cpu_seconds / self.tiles

    def line(self) -> str:
        """The figures as one line."""
        return (
            f"{self.rate:7.0f} tiles/s ({self.seconds:.1f} s; {self.cpu_per_tile_ms:.2f} CPU-ms/tile, "
            f"{self.cpu_seconds / self.seconds:.2f} cores busy; peak RSS +{self.rss_growth_mb:.0f} MiB; "
            f"load {self.load:.1f})"
        )


def _layout(tiles_y: int, tiles_x: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per file tile: tissue or glass (a rounded slab with a glass margin) and a tissue class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:tiles_y, 0:tiles_x] / np.array([tiles_y, tiles_x])[:, None, None]
    tissue = ((yy - 0.5) / 0.48) ** 4 + ((xx - 0.5) / 0.48) ** 4 <= 1.0
    blocks = rng.choice(TISSUE_CLASSES, size=(tiles_y // 4 + 1, tiles_x // 4 + 1))
    classes = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:tiles_y, :tiles_x]
    return tissue, np.where(tissue, classes, 0)


def write_bench_slide(path: Path, seed: int = 0, size_xy: tuple[int, int] = SIZE_XY) -> None:
    """Write the synthetic pyramid of ``size_xy`` level-0 pixels (level 0 tile by tile; reduced
    levels as whole arrays)."""
    import tifffile

    from napari_care.core.synthetic.textures import make_swatch

    width, height = size_xy
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


def bench_slide(workdir: Path) -> Path:
    """The generated benchmark slide in ``workdir``, written the first time it is asked for."""
    path = workdir / f"bench_{SIZE_XY[0]}x{SIZE_XY[1]}_jpeg.tif"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_bench_slide(path)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    return path


def decode_ceiling(path: Path, grid, workers: int) -> tuple[Timing, int]:
    """Timing of decoding, once each in ``workers`` threads, the file tiles the grid covers (TIFF only)."""
    import tifffile

    from napari_care.core.slide import tifffile_backend as slide_tiff

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
            with Timing(len(grid)) as timing, ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(lambda yx: source.decode_tile(*yx), sorted(needed)):
                    pass
            return timing, len(needed)
        finally:
            os.close(fd)


def clam_style(
    path: Path, grid, encoder, rows: np.ndarray, batch_size: int, *, encode: bool = True
) -> Timing:
    """A one-thread OpenSlide loop over the tiles ``rows`` (with or without encoding)."""
    import openslide
    from PIL import Image

    mean = np.array(encoder.cfg.mean, np.float32)
    std = np.array(encoder.cfg.std, np.float32)
    size_read = round(grid.tile_size_read_px)
    osr = openslide.OpenSlide(str(path))
    with Timing(len(rows)) as timing:
        batch = []
        for x, y in grid.coords[rows]:
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
    osr.close()
    return timing


def tiatoolbox(python: Path, path: Path, grid, rows: np.ndarray, args, *, encode: bool) -> Timing | str:
    """TIAToolbox's PointsPatchExtractor over the tiles ``rows`` in its own venv; a reason when it
    cannot run."""
    if not python.exists():
        return (
            f"no Python at {python} (make the venv: python3.11 -m venv {python.parent.parent} && "
            f"{python.parent}/pip install tiatoolbox)"
        )
    script = Path(__file__).with_name("bench_extract_tiatoolbox.py")
    with tempfile.TemporaryDirectory() as tmp:
        corners = Path(tmp) / "corners.npy"
        np.save(corners, grid.coords[rows])
        command = [
            str(python),
            str(script),
            str(path),
            str(corners),
            "--tile-size",
            str(grid.tile_size_px),
            "--mpp",
            str(grid.target_mpp),
            "--level0-mpp",
            str(args.level0_mpp),
            "--batch-size",
            str(args.batch_size),
            "--encoder",
            args.encoder,
            *(["--weights", args.weights] if args.weights else []),
        ]
        done = subprocess.run(command + ([] if encode else ["--no-encode"]), capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        return f"{python} failed: {reason}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    timing = Timing(report["tiles"])
    timing.seconds, timing.cpu_seconds = report["seconds"], report["cpu_seconds"]
    timing.note = (
        f"TIAToolbox {report['version']}, {report['reader']}; its process peaked at "
        f"{report['peak_rss_mb']:.0f} MiB RSS (the RSS growth above is of this process, so 0)"
    )
    return timing


def measure_reading(
    path: Path, grid, workers: int, batch_size: int, keep_every: int
) -> tuple[Timing, np.ndarray]:
    """Timing of reading every tile of the grid, and every ``keep_every``-th batch (encoder input)."""
    kept = []
    with open_slide(path) as slide, Timing(len(grid)) as timing:
        batches = iter_tile_batches(
            slide, grid, np.arange(len(grid)), batch_size=batch_size, num_workers=workers
        )
        for i, (_, tiles) in enumerate(batches):
            if i % keep_every == 0:
                kept.append(tiles)
    return timing, np.concatenate(kept)


def measure_reading_rows(path: Path, grid, rows: np.ndarray, workers: int, batch_size: int) -> Timing:
    """Timing of reading the tiles ``rows`` of the grid."""
    with open_slide(path) as slide, Timing(len(rows)) as timing:
        for _ in iter_tile_batches(slide, grid, rows, batch_size=batch_size, num_workers=workers):
            pass
    return timing


def measure_encoding(encoder, sample: np.ndarray, batch_size: int, passes: int = 3) -> Timing:
    """Timing of the encoder alone on ready batches of ``sample``, ``passes`` times
    (after a warm-up batch)."""
    encoder.encode(sample[:batch_size])
    with Timing(passes * len(sample)) as timing:
        for _ in range(passes):
            for start in range(0, len(sample), batch_size):
                encoder.encode(sample[start : start + batch_size])
    return timing


def measure_end_to_end(path: Path, grid, encoder, workers: int, batch_size: int) -> Timing:
    """Timing of ``extract_features`` over the grid."""
    with open_slide(path) as slide, Timing(len(grid)) as timing:
        run_to_end(extract_features(slide, grid, encoder, batch_size=batch_size, num_workers=workers))
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, help="a slide to use instead of the synthetic one")
    default_workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    parser.add_argument("--encoder", default="default")
    parser.add_argument(
        "--weights",
        default=None,
        help="weights for a timm encoder ('random' for a random-weight model; none can be downloaded here)",
    )
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=None, help="reader threads (default: cores, max 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many for reading and end to end")
    parser.add_argument(
        "--compare-tiles",
        type=int,
        default=4000,
        help="tiles (a contiguous run mid-slide) for the CLAM-style and TIAToolbox loops; 0: all",
    )
    parser.add_argument(
        "--tiles", type=int, default=0, help="use only the first N tissue tiles (0: all; quick checks)"
    )
    parser.add_argument(
        "--tia-python",
        type=Path,
        default=Path("/tmp/tia-venv/bin/python"),
        help="Python of a venv with tiatoolbox",
    )
    args = parser.parse_args()

    path = args.slide or bench_slide(args.workdir)
    workers = args.workers or min(16, os.cpu_count() or 1)
    encoder = create_encoder(args.encoder, weights=args.weights)
    print(
        f"machine: {os.cpu_count()} cores; reader threads {workers}; encoder {encoder.cfg.name!r}; "
        f"batch {args.batch_size}; load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}"
    )

    with open_slide(path) as slide:
        grid = tile_grid(slide, mpp=args.mpp, tile_size_px=args.tile_size)
        if args.tiles:
            grid = grid.take(np.arange(min(args.tiles, len(grid))))
        chunks = slide.levels[grid.read_level].chunksize
        width, height = slide.dimensions[0]
        args.level0_mpp = slide.mpp[0]
        print(
            f"slide: {path.name}, {width}x{height} px at {slide.mpp[0]:.3g} um/px, file tiles "
            f"{chunks[1]}x{chunks[0]}; grid: {len(grid)} tissue tiles of {grid.tile_size_px} px at "
            f"{grid.target_mpp} um/px, read from level {grid.read_level}"
        )
    n = len(grid)
    keep_every = max(1, n // args.batch_size // 16)  # ~16 batches spread over the slide for the encoder

    ceilings, readings, encodings, ends = [], [], [], []
    for _ in range(max(1, args.repeat)):  # interleaved: every phase sees the same machine load
        ceilings.append(decode_ceiling(path, grid, workers))
        readings.append(measure_reading(path, grid, workers, args.batch_size, keep_every))
        encodings.append(measure_encoding(encoder, readings[0][1], args.batch_size))
        ends.append(measure_end_to_end(path, grid, encoder, workers, args.batch_size))
    ceiling, n_file_tiles = min(ceilings, key=lambda c: c[0].seconds)
    reading, sample = min(readings, key=lambda r: r[0].seconds)
    encoding = min(encodings, key=lambda t: t.seconds)
    end = min(ends, key=lambda t: t.seconds)
    print(f"decode ceiling   : {ceiling.line()} ({n_file_tiles} file tiles decoded once)")
    print(f"reading only     : {reading.line()}, {reading.rate / ceiling.rate:.0%} of the ceiling")
    print(f"encoding only    : {encoding.line()} ({len(sample)} tiles from across the slide, 3 passes)")
    print(f"end to end       : {end.line()}")
    slower = min(reading.rate, encoding.rate)
    shared = 1.0 / (1.0 / reading.rate + 1.0 / encoding.rate)
    print(f"ratio end to end / slower stage : {end.rate / slower:.2f} (target >= 0.85)")
    print(
        f"ratio end to end / shared-core bound 1/(1/read + 1/encode) = {shared:.0f} tiles/s : "
        f"{end.rate / shared:.2f} (both stages busy every core: they cannot overlap beyond this)"
    )
    # Even a reader that did nothing but decode (the ceiling) shares the cores with the encoder:
    # with both stages CPU-bound, end to end / encoding cannot exceed encode / (encode + decode) CPU.
    if encoding.rate < reading.rate:
        best = encoding.cpu_per_tile_ms / (encoding.cpu_per_tile_ms + ceiling.cpu_per_tile_ms)
        print(
            "ratio bound if reading cost no more than decoding "
            f"(CPU-bound stages on shared cores) : {best:.2f}"
        )
    cpu_sum = reading.cpu_per_tile_ms + encoding.cpu_per_tile_ms
    print(
        f"CPU per tile     : read {reading.cpu_per_tile_ms:.2f} + encode {encoding.cpu_per_tile_ms:.2f} = "
        f"{cpu_sum:.2f} ms; end to end {end.cpu_per_tile_ms:.2f} ms "
        f"({end.cpu_per_tile_ms / cpu_sum:.2f} of the sum)"
    )

    n_cmp = min(args.compare_tiles or n, n)
    rows = np.arange(n_cmp) + (n - n_cmp) // 2  # a contiguous run, so OpenSlide's tile cache helps it too
    ours_read = measure_reading_rows(path, grid, rows, workers, args.batch_size)
    ours_end = measure_end_to_end(path, grid.take(rows), encoder, workers, args.batch_size)
    print(f"project, same {n_cmp} tiles : reading {ours_read.line()}; end to end {ours_end.line()}")
    clam_read = clam_style(path, grid, encoder, rows, args.batch_size, encode=False)
    clam = clam_style(path, grid, encoder, rows, args.batch_size)
    print(f"CLAM-style read  : {clam_read.line()} (OpenSlide read_region per tile, PIL, one thread)")
    print(f"CLAM-style loop  : {clam.line()} (the same, encoder included)")
    print(f"ratio reading    : {ours_read.rate / clam_read.rate:.2f}x project / CLAM-style")
    print(f"ratio end to end : {ours_end.rate / clam.rate:.2f}x project / CLAM-style (target >= 3x)")
    tia_read = tiatoolbox(args.tia_python, path, grid, rows, args, encode=False)
    if isinstance(tia_read, str):
        print(f"TIAToolbox: not installed ({tia_read})")
    else:
        tia = tiatoolbox(args.tia_python, path, grid, rows, args, encode=True)
        print(f"TIAToolbox read  : {tia_read.line()} ({tia_read.note}, PointsPatchExtractor, same tiles)")
        if isinstance(tia, str):
            print(f"TIAToolbox loop  : failed ({tia})")
        else:
            print(f"TIAToolbox loop  : {tia.line()} (the same, encoder included)")
            print(f"ratio end to end : {ours_end.rate / tia.rate:.2f}x project / TIAToolbox")
        print(f"ratio reading    : {ours_read.rate / tia_read.rate:.2f}x project / TIAToolbox")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"peak RSS of the process: {peak_mib:.0f} MiB; end to end grew it by {end.rss_growth_mb:.0f} MiB "
        f"(features {n * encoder.embed_dim * 4 / 2**20:.0f} MiB); load average "
        f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
