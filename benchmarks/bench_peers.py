"""Peers side by side: napari_care, an OpenSlide CLAM-style loop and LazySlide, same slide, same encoders.

    flock /tmp/bench.lock python benchmarks/bench_peers.py [--slide SVS] [--make-venvs]
        [--e2e-tiles 0] [--same-tiles 2048] [--cnn-tiles 1024]

The slide is the gigapixel benchmark slide of ``make_gigapixel.py`` (100,000 x 80,000 px at
0.25 um/px); every tile is 224 px at 0.5 um/px (20x), i.e. 448 level-0 pixels read and
halved: napari_care by its integer 2x2 block mean, LazySlide by ``cv2.INTER_AREA``, the
CLAM-style loop by torchvision's ``Resize(224)`` on the PIL tile (bilinear, antialiased).
Each peer runs with the Python of its own virtual environment (``--make-venvs`` makes a
missing one; existing ones are used as they are):

- CLAM-style (``bench_peers_clam.py``, ``--clam-python``): OpenSlide ``read_region`` per tile
  in a ``Dataset``, CLAM's CPU ``DataLoader`` (no workers), features appended to HDF5;
- LazySlide (``bench_peers_lazyslide.py``, ``--lazyslide-python``): ``open_wsi``,
  ``zs.pp.find_tissues``, ``zs.pp.tile_tissues(wsi, 224, mpp=0.5)``,
  ``zs.tl.feature_extraction`` (or its feature extraction alone on napari_care's tiles).

Encoders, the same in every contender: ``default``, napari_care's numpy descriptor, whose
module files are copied into a folder each peer imports (the same code: equal work per
tile; a check here that the copy gives napari_care's features bit for bit); and timm's
``resnet18`` with random weights (``pretrained=False`` after ``torch.manual_seed(0)``;
every contender reports the weights' checksum). Batches of ``--batch-size`` (64) in every
contender, torch's default threads (the 2 cores).

Figures (tiles/s of wall time, CPU-ms per tile, peak RSS, load average around each run):

1. end to end with ``default`` from the slide file: napari_care (``open_slide``,
   ``tile_grid`` with its tissue mask over the whole slide, ``extract_features``) against
   LazySlide (open, find tissue, tile, extract), each encoding all its own tiles, or
   ``--e2e-tiles`` of them (runs of 64 neighbours spread evenly over its tile list,
   ``spread_rows``; LazySlide took 290 s for all 31,661 of its tiles here); tiles/s
   are tiles encoded over the whole time, tissue detection included; target: napari_care
   >= 2x LazySlide;
2. ``default`` on the same ``--same-tiles`` tiles (runs of 64 neighbouring grid tiles spread
   evenly over the slide): napari_care, LazySlide, CLAM-style; cosine of each peer's
   features with napari_care's on every tile;
3. ``resnet18`` on the same ``--cnn-tiles`` tiles (runs of 64, spread the same way; the
   network costs ~50 CPU-ms a tile here, so not the whole slide): the bare forward rate
   (the model on ready normalised tensors, this process, same batch size) against
   ``extract_features`` end to end, twice, interleaved; target: >= 0.95 of the bare rate;
   a profile of the rest (reading alone, the timm eval transform alone); and the peers on
   the same tiles, with cosines.

The OS page cache is warmed by reading the slide once first (it fits in RAM); napari_care's
tile cache (256 MiB) cannot hold the slide. Writes ``docs/results/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.progress import run_to_end
from napari_care.core.slide.handle import DEFAULT_CACHE_BYTES, open_slide
from napari_care.core.tile_reader import iter_tile_batches
from napari_care.core.tiling import TileGrid, tile_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers_common import peak_rss_mib, spread_rows
from result_files import RESULTS, ROOT, write_result
from slide_files import warm_page_cache

RESULT = RESULTS / "peers.json"
BENCH_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
DEFAULT_SLIDE = BENCH_DIR / "gigapixel_100000x80000_seed0.svs"
HERE = Path(__file__).resolve().parent
ENCODERS_DIR = ROOT / "napari_care" / "core" / "encoders"
TILE_PX, MPP = 224, 0.5

SHIPPED_PACKAGE = "napari_care_descriptor"
DESCRIPTOR_FILES = ("config.py", "descriptor.py", "descriptor_ops.py", "descriptor_constants.py")
# The descriptor registers itself with napari_care's registry; a peer has none, so the
# shipped package's registry only hands the factory back.
SHIPPED_REGISTRY = '''"""The part of napari_care's registry the descriptor uses: a decorator."""


def register_encoder(cfg):
    return lambda factory: factory
'''

#: Each peer's venv and what goes into it. timm imports torchvision, and PyPI's torchvision
#: does not import beside the CPU torch 2.13.0 on this disk: torch 2.14.1 + torchvision
#: 0.29.1 (also on disk) instead; LazySlide pins its own.
VENVS = {
    "clam": (
        Path("/tmp/clam-venv"),
        ["torch==2.14.1", "torchvision==0.29.1", "timm", "openslide-python", "openslide-bin", "h5py"],
    ),
    "lazyslide": (Path("/tmp/lazyslide-venv"), ["lazyslide==0.13.0"]),
}


def load() -> list[float]:
    """The load average (1, 5, 15 min), rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def ship_descriptor(dest: Path) -> Path:
    """Copy napari_care's descriptor modules into ``dest/napari_care_descriptor``; returns ``dest``."""
    package = dest / SHIPPED_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for name in DESCRIPTOR_FILES:
        shutil.copyfile(ENCODERS_DIR / name, package / name)
    (package / "registry.py").write_text(SHIPPED_REGISTRY, encoding="utf-8")
    (package / "__init__.py").write_text(
        '"""napari_care\'s built-in descriptor, shipped."""\n', encoding="utf-8"
    )
    return dest


def shipped_matches(dest: Path, tiles: np.ndarray) -> float:
    """Largest absolute difference between the shipped descriptor and napari_care's on ``tiles``."""
    sys.path.insert(0, str(dest))
    try:
        from napari_care_descriptor.descriptor import DescriptorEncoder
    finally:
        sys.path.remove(str(dest))
    ours = create_encoder("default").encode(tiles)
    return float(np.abs(DescriptorEncoder().encode(tiles) - ours).max())


def venv_python(name: str, given: Path | None, make: bool) -> Path | str:
    """The Python of the peer's venv (made first with ``make`` when missing), or why there is none."""
    root, packages = VENVS[name]
    python = given or root / "bin" / "python"
    if python.is_file():
        return python
    if not make:
        return f"no {python}; run with --make-venvs"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    done = subprocess.run([str(root / "bin" / "pip"), "install", "-q", *packages], check=False)
    return python if done.returncode == 0 and python.is_file() else f"pip install {packages} failed"


def record(tiles: int, seconds: float, cpu_seconds: float, load_before: list[float], **extra) -> dict:
    """One contender's figures."""
    return {
        "tiles": int(tiles),
        "seconds": round(seconds, 3),
        "tiles_per_s": round(tiles / seconds, 2),
        "cpu_ms_per_tile": round(1e3 * cpu_seconds / tiles, 3),
        "cores_busy": round(cpu_seconds / seconds, 2),
        "load_before": load_before,
        "load_after": load(),
        **extra,
    }


def cosines(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Per-tile cosine of two feature matrices (rows of the same tiles): mean, min, 1st percentile."""
    dot = (ours * theirs).sum(axis=1)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    cos = dot / np.maximum(norms, 1e-12)
    return {
        "mean": round(float(cos.mean()), 5),
        "p01": round(float(np.percentile(cos, 1)), 5),
        "min": round(float(cos.min()), 5),
    }


def napari_care_end_to_end(path: Path, encoder, batch_size: int, subset: int) -> tuple[dict, TileGrid]:
    """Open, tissue mask and grid, ``extract_features`` (on ``subset`` of the tiles, ``spread_rows``;
    0: all): figures and the whole grid."""
    before = load()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with open_slide(path) as slide:
        grid = tile_grid(slide, mpp=MPP, tile_size_px=TILE_PX)
        encoded = grid.take(spread_rows(len(grid), subset))
        tiled_s = time.perf_counter() - wall0
        run_to_end(extract_features(slide, encoded, encoder, batch_size=batch_size))
    seconds, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stages = {
        "own_tiles": len(grid),
        "open_and_tiles_s": round(tiled_s, 3),
        "features_s": round(seconds - tiled_s, 3),
    }
    return record(len(encoded), seconds, cpu, before, stages=stages), grid


def napari_care_on(path: Path, grid, encoder, batch_size: int) -> tuple[dict, np.ndarray]:
    """Open and ``extract_features`` over ``grid`` (tiles given): figures and features."""
    before = load()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with open_slide(path) as slide:
        features = run_to_end(extract_features(slide, grid, encoder, batch_size=batch_size)).features
    return record(len(grid), time.perf_counter() - wall0, time.process_time() - cpu0, before), features


def bare_forward(encoder, x, batches: int) -> dict:
    """The model alone on the ready normalised batch ``x``, ``batches`` times (after one warm-up)."""
    encoder.forward_tensor(x)
    before = load()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        encoder.forward_tensor(x)
    tiles = batches * len(x)
    return record(tiles, time.perf_counter() - wall0, time.process_time() - cpu0, before)


def cnn_profile(path: Path, subset, encoder, tiles: np.ndarray, batch_size: int) -> dict:
    """Where napari_care's resnet18 run spends CPU besides the network: reading the tiles alone
    (``iter_tile_batches`` over ``subset``) and the timm eval transform alone (``preprocess`` of
    ready uint8 batches), CPU-ms per tile each."""
    before = load()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with open_slide(path) as slide:
        for _ in iter_tile_batches(slide, subset, np.arange(len(subset)), batch_size=batch_size):
            pass
    reading = record(len(subset), time.perf_counter() - wall0, time.process_time() - cpu0, before)
    passes = max(1, len(subset) // len(tiles) // 2)
    before = load()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        encoder.preprocess(tiles)
    preprocess = record(passes * len(tiles), time.perf_counter() - wall0, time.process_time() - cpu0, before)
    return {"reading_only": reading, "preprocess_only": preprocess}


def run_peer(python: Path | str, script: str, arguments: list[str], features_out: Path) -> dict:
    """Run a peer's side script; its figures (and features in ``features_out``) or why it failed."""
    if isinstance(python, str):
        return {"error": python}
    before = load()
    done = subprocess.run(
        [str(python), str(HERE / script), *arguments], capture_output=True, text=True, check=False, cwd=HERE
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"{script} exited {done.returncode}: {' | '.join(tail)}"}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    figures = record(report.pop("tiles"), report.pop("seconds"), report.pop("cpu_seconds"), before)
    return figures | report


def line(name: str, figures: dict) -> str:
    """One contender's figures as a line."""
    if "error" in figures:
        return f"{name:44s}: not run ({figures['error']})"
    return (
        f"{name:44s}: {figures['tiles_per_s']:8.1f} tiles/s "
        f"({figures['tiles']} tiles, {figures['seconds']:.1f} s; "
        f"{figures['cpu_ms_per_tile']:.2f} CPU-ms/tile, {figures['cores_busy']:.2f} cores; "
        f"load {figures['load_before'][0]:.1f} -> {figures['load_after'][0]:.1f})"
    )


def ratio(ours: dict, theirs: dict) -> float | None:
    """``ours`` tiles/s over ``theirs`` (None when either did not run)."""
    if "error" in ours or "error" in theirs:
        return None
    return round(ours["tiles_per_s"] / theirs["tiles_per_s"], 3)


def peers_on_tiles(
    encoder: str, path: Path, coords: np.ndarray, our_features: np.ndarray, context: dict
) -> dict:
    """LazySlide and the CLAM-style loop on the tiles at ``coords`` with ``encoder``, and their
    cosines to ``our_features``; ``context``: pythons, scratch, ship, batch_size."""
    corners = context["scratch"] / f"{encoder}_corners.npy"
    np.save(corners, coords)
    common = ["--encoder", encoder, "--descriptor-dir", str(context["ship"])]
    common += ["--batch-size", str(context["batch_size"])]
    peers = {}
    for name, script, shown in (
        ("lazyslide", "bench_peers_lazyslide.py", "LazySlide"),
        ("clam", "bench_peers_clam.py", "CLAM-style"),
    ):
        out = context["scratch"] / f"{name}_{encoder}.npy"
        arguments = (
            [str(path), str(out), *common, "--corners", str(corners)]
            if name == "lazyslide"
            else [str(path), str(corners), str(out), *common]
        )
        peers[name] = run_peer(context["pythons"][name], script, arguments, out)
        if "error" not in peers[name]:
            peers[name]["cosine_to_napari_care"] = cosines(our_features, np.load(out))
        print(line(f"{shown} {encoder}, same tiles", peers[name]), flush=True)
    return peers


def compare_default(
    args, path: Path, grid, rows: np.ndarray, pythons: dict, scratch: Path, ship: Path
) -> dict:
    """The ``default`` descriptor on the same tiles in every contender."""
    encoder = create_encoder("default")
    subset = grid.take(rows)
    ours, our_features = napari_care_on(path, subset, encoder, args.batch_size)
    print(line("napari_care default, same tiles", ours), flush=True)
    context = {"pythons": pythons, "scratch": scratch, "ship": ship, "batch_size": args.batch_size}
    peers = peers_on_tiles("default", path, subset.coords, our_features, context)
    return {
        "tiles": len(rows),
        "napari_care": ours,
        **peers,
        "ratio_napari_care_over_lazyslide": ratio(ours, peers["lazyslide"]),
        "ratio_napari_care_over_clam": ratio(ours, peers["clam"]),
    }


def compare_cnn(args, path: Path, grid, rows: np.ndarray, pythons: dict, scratch: Path, ship: Path) -> dict:
    """resnet18 (random weights): the bare forward rate, napari_care end to end, the peers."""
    import torch

    encoder = create_encoder("timm:resnet18", weights="random", device="cpu")
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in encoder.model.trunk.parameters()))
    subset = grid.take(rows)
    with open_slide(path) as slide:
        _, tiles = next(
            iter_tile_batches(slide, subset, np.arange(args.batch_size), batch_size=args.batch_size)
        )
    x = encoder.preprocess(tiles)  # ready tensors: resized, normalised, channels-last
    bare_batches = max(1, len(rows) // args.batch_size // 2)
    bares, ends = [], []
    our_features = None
    for _ in range(2):  # interleaved, so both see the same machine
        bares.append(bare_forward(encoder, x, bare_batches))
        print(line("resnet18 bare forward (ready tensors)", bares[-1]), flush=True)
        end, our_features = napari_care_on(path, subset, encoder, args.batch_size)
        ends.append(end)
        print(line("napari_care resnet18 end to end", end), flush=True)
    profile = cnn_profile(path, subset, encoder, tiles, args.batch_size)
    print(line("napari_care reading only (profile)", profile["reading_only"]), flush=True)
    print(line("napari_care preprocess only (profile)", profile["preprocess_only"]), flush=True)
    pairs = [round(e["tiles_per_s"] / b["tiles_per_s"], 3) for b, e in zip(bares, ends, strict=True)]
    best_bare = max(bares, key=lambda f: f["tiles_per_s"])
    best_end = max(ends, key=lambda f: f["tiles_per_s"])
    context = {"pythons": pythons, "scratch": scratch, "ship": ship, "batch_size": args.batch_size}
    peers = peers_on_tiles("resnet18", path, subset.coords, our_features, context)
    return {
        "tiles": len(rows),
        "input": f"{TILE_PX}-px tiles resized to {round(encoder.cfg.input_size / encoder.cfg.crop_pct)} and "
        f"centre-cropped to {x.shape[-1]} (timm's eval transform of resnet18, crop_pct "
        f"{encoder.cfg.crop_pct})",
        "weights_checksum": checksum,
        "torch_threads": torch.get_num_threads(),
        "bare_forward": bares,
        "napari_care_end_to_end": ends,
        "profile": profile,
        "ratio_end_to_end_over_bare_pairs": pairs,
        "ratio_end_to_end_over_bare": round(best_end["tiles_per_s"] / best_bare["tiles_per_s"], 3),
        **peers,
        "ratio_napari_care_over_lazyslide": ratio(best_end, peers["lazyslide"]),
        "ratio_napari_care_over_clam": ratio(best_end, peers["clam"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--make-venvs", action="store_true", help="make a missing peer venv")
    parser.add_argument("--clam-python", type=Path, default=None)
    parser.add_argument("--lazyslide-python", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--same-tiles", type=int, default=2048, help="default encoder, same tiles (0: all)")
    parser.add_argument("--cnn-tiles", type=int, default=1024, help="resnet18, same tiles (0: all)")
    parser.add_argument(
        "--e2e-tiles", type=int, default=0, help="end to end: tiles encoded of each one's own (0: all)"
    )
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if not args.slide.is_file():
        parser.error(f"no slide at {args.slide}: run python benchmarks/make_gigapixel.py")

    load_start = load()
    pythons = {
        "clam": venv_python("clam", args.clam_python, args.make_venvs),
        "lazyslide": venv_python("lazyslide", args.lazyslide_python, args.make_venvs),
    }
    warm_s = warm_page_cache(args.slide)
    ram = psutil.virtual_memory().total
    size = args.slide.stat().st_size
    print(
        f"slide {args.slide.name}: {size / 2**30:.2f} GiB (page cache warmed in {warm_s:.1f} s; RAM "
        f"{ram / 2**30:.0f} GiB); load average {load_start}",
        flush=True,
    )

    figures: dict = {
        "slide": {
            "path": str(args.slide),
            "bytes": size,
            "ram_bytes": ram,
            "fits_in_page_cache": size < ram,
            "fits_in_tile_cache": size < DEFAULT_CACHE_BYTES,
            "tile_cache_bytes": DEFAULT_CACHE_BYTES,
            "page_cache": "file read once beforehand; not dropped (shared machine)",
        },
        "tile": f"{TILE_PX} px at {MPP} um/px (level 0 read at {2 * TILE_PX} px and halved)",
        "batch_size": args.batch_size,
        "load_average_at_start": load_start,
        "venvs": {name: str(p) for name, p in pythons.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        ship = ship_descriptor(scratch / "ship")
        encoder = create_encoder("default")
        if not args.no_end_to_end:
            ours, grid = napari_care_end_to_end(args.slide, encoder, args.batch_size, args.e2e_tiles)
            print(line("napari_care default end to end (own tiles)", ours), flush=True)
            out = scratch / "lazyslide_e2e.npy"
            lazy = run_peer(
                pythons["lazyslide"],
                "bench_peers_lazyslide.py",
                [
                    str(args.slide),
                    str(out),
                    "--encoder",
                    "default",
                    "--descriptor-dir",
                    str(ship),
                    "--batch-size",
                    str(args.batch_size),
                    "--subset",
                    str(args.e2e_tiles),
                ],
                out,
            )
            if "error" not in lazy:
                theirs = np.load(out.with_suffix(".corners.npy"))
                shared = len(set(map(tuple, theirs)) & set(map(tuple, grid.coords)))
                lazy["encoded_tiles_at_napari_care_grid_corners"] = shared
            print(line("LazySlide default end to end (own tiles)", lazy), flush=True)
            figures["end_to_end_default"] = {
                "napari_care": ours,
                "lazyslide": lazy,
                "ratio_napari_care_over_lazyslide": ratio(ours, lazy),
                "target_ratio": 2.0,
            }
        with open_slide(args.slide) as slide:
            if args.no_end_to_end:
                grid = tile_grid(slide, mpp=MPP, tile_size_px=TILE_PX)
            _, sample = next(iter_tile_batches(slide, grid, spread_rows(len(grid), 256), batch_size=256))
        figures["grid_tiles"] = len(grid)
        figures["shipped_descriptor_max_abs_diff"] = shipped_matches(ship, sample)
        print(
            f"grid: {len(grid)} tissue tiles; shipped descriptor vs napari_care's on 256 tiles: max |diff| "
            f"{figures['shipped_descriptor_max_abs_diff']:.3g}",
            flush=True,
        )
        same = spread_rows(len(grid), args.same_tiles)
        figures["same_tiles_default"] = compare_default(args, args.slide, grid, same, pythons, scratch, ship)
        cnn = spread_rows(len(grid), args.cnn_tiles)
        cnn_figures = compare_cnn(args, args.slide, grid, cnn, pythons, scratch, ship)
        figures["same_tiles_resnet18"] = cnn_figures | {"target_ratio": 0.95}
    figures["peak_rss_mib_napari_care_process"] = round(peak_rss_mib())
    figures["load_average_at_end"] = load()
    summary = summarise(figures)
    figures["summary"] = summary
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(write_result(args.out, "peers", figures))


def summarise(figures: dict) -> dict:
    """The headline ratios and whether each target is met."""
    summary = {}
    e2e = figures.get("end_to_end_default")
    if e2e and e2e["ratio_napari_care_over_lazyslide"] is not None:
        value = e2e["ratio_napari_care_over_lazyslide"]
        summary["end to end default: napari_care / LazySlide"] = {
            "ratio": value,
            "target": 2.0,
            "met": value >= 2.0,
        }
    cnn = figures["same_tiles_resnet18"]
    value = cnn["ratio_end_to_end_over_bare"]
    summary["resnet18: napari_care end to end / bare forward"] = {
        "ratio": value,
        "pairs": cnn["ratio_end_to_end_over_bare_pairs"],
        "target": 0.95,
        "met": value >= 0.95,
    }
    for key in ("same_tiles_default", "same_tiles_resnet18"):
        for peer in ("lazyslide", "clam"):
            summary[f"{key}: napari_care / {peer}"] = figures[key][f"ratio_napari_care_over_{peer}"]
    return summary


if __name__ == "__main__":
    main()
