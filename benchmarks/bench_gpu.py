"""GPU benchmark: a ViT through the project's pipeline against its bare forward rate.

    python benchmarks/bench_gpu.py                               # ViT-B/16 and ViT-L/16, batch 256, CUDA
    python benchmarks/bench_gpu.py --json out.json               # also write the figures to one JSON
    python benchmarks/bench_gpu.py --device cpu --quick          # logic check at a tiny size, no GPU

For each model (timm, random weights: nothing is downloaded), on the same device:

- bare forward: the model alone on random, already normalised ``[B, 3, 224, 224]`` tensors
  on the device (the encoder's autocast: bf16 on CUDA where supported; channels-last,
  inference mode), the rate a GPU could reach if reading cost nothing;
- end to end: :func:`napari_care.core.extract.extract_features` with the same encoder on a
  generated JPEG slide (pyramidal TIFF, 256-px file tiles, quality 80, 0.5 um/px; written
  once into ``--workdir``): threads decode and cut tiles into pinned host buffers, a feed
  thread keeps ready batches queued, uploads are non_blocking, the device normalises and
  runs the model one batch ahead of the host;
- the ratio end to end / bare (target >= 0.80: reading never starves the GPU);
- agreement: cosine similarity of the device's features (autocast) with float32 CPU
  features of the same tiles (a check that reduced precision did not break the model).

Tiles at 224 px go straight into the model (crop_pct 1.0, as the pathology presets do).
``--quick`` shrinks everything (ViT-Ti/16 and ViT-S/16, batch 16, a small slide) so the
whole script runs in about a minute on a CPU. Exits with status 2 and a one-line message
when CUDA is asked for and there is none.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_extract's slide writer

DEFAULT_MODELS = ("vit_base_patch16_224", "vit_large_patch16_224")
QUICK_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
TARGET_RATIO = 0.80
FULL_SLIDE_PX = 36864  # 144 x 144 file tiles: ~21,000 tissue tiles of 224 px at 0.5 um/px
QUICK_SLIDE_PX = 4096


def build_encoder(arch: str, device: str):
    """The project's timm encoder for ``arch`` with random weights, fed 224-px tiles as they are."""
    from napari_care.core.encoders import create_encoder

    encoder = create_encoder(f"timm:{arch}", weights="random", device=device)
    # timm's ImageNet crop_pct (0.9) would upsample every tile to 249 px and crop it back:
    # pointless on tiles cut at the right size, and not what the bare forward runs.
    encoder.cfg = dataclasses.replace(encoder.cfg, crop_pct=1.0)
    return encoder


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA timings need it)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_rate(encoder, batch_size: int, n_tiles: int) -> float:
    """Tiles per second of the model alone on random normalised tensors already on the device."""
    import torch

    device, size = encoder.device, encoder.cfg.input_size
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, device=device, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):  # warm-up: cuDNN/cuBLAS heuristics, allocator
        encoder.forward_tensor(x)
    synchronize(device)
    steps = max(1, n_tiles // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        out = encoder.forward_tensor(x)
    out.cpu()  # the last result back on the host, as the pipeline does
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def pipeline_rate(encoder, slide_path: Path, n_tiles: int, batch_size: int, workers: int) -> dict:
    """End-to-end figures of ``extract_features`` over the first ``n_tiles`` tissue tiles."""
    from bench_extract import PeakRss

    from napari_care.core import extract
    from napari_care.core.extract import extract_features
    from napari_care.core.progress import run_to_end
    from napari_care.core.slide.handle import open_slide
    from napari_care.core.tiling import tile_grid

    with open_slide(slide_path) as slide:
        full = tile_grid(slide, mpp=0.5, tile_size_px=encoder.cfg.input_size)
        grid = full.take(np.arange(min(n_tiles, len(full))))
        # warm-up on tiles outside the timed ones when there are any, so that the timed run
        # finds none of its file tiles in the slide's cache
        spare = np.arange(len(grid), len(full)) if len(full) > len(grid) else np.arange(len(grid))[::-1]
        warm = full.take(spare[: 2 * batch_size])
        run_to_end(extract_features(slide, warm, encoder, batch_size=batch_size, num_workers=workers))
        with PeakRss() as rss:
            start, cpu = time.perf_counter(), time.process_time()
            result = run_to_end(
                extract_features(slide, grid, encoder, batch_size=batch_size, num_workers=workers)
            )
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if result.features.shape != (len(grid), encoder.embed_dim) or not np.isfinite(result.features).all():
        shape = result.features.shape
        raise RuntimeError(f"pipeline returned features of shape {shape} for {len(grid)} tiles")
    return {
        "tiles": len(grid),
        "tiles_per_s": len(grid) / seconds,
        "seconds": seconds,
        "host_cores_busy": cpu_seconds / seconds,
        "peak_rss_growth_mib": rss.growth_mb,
        "overlapped_feed": bool(extract._feeds_device(encoder)),
    }


def agreement(encoder, slide_path: Path, n_tiles: int = 16) -> float:
    """Smallest cosine similarity between the encoder's features and float32 CPU features."""
    import torch

    from napari_care.core.slide.handle import open_slide
    from napari_care.core.tile_reader import iter_tile_batches
    from napari_care.core.tiling import tile_grid

    with open_slide(slide_path) as slide:
        grid = tile_grid(slide, mpp=0.5, tile_size_px=encoder.cfg.input_size)
        rows = np.arange(min(n_tiles, len(grid)))
        _, tiles = next(iter_tile_batches(slide, grid, rows, batch_size=len(rows), num_workers=2))
    tiles = tiles.copy()
    on_device = encoder.encode(tiles)
    model, device, dtype = encoder.model, encoder.device, encoder.autocast_dtype
    try:
        encoder.model, encoder.device, encoder.autocast_dtype = model.cpu(), torch.device("cpu"), None
        encoder._mean, encoder._std = encoder._mean.cpu(), encoder._std.cpu()
        reference = encoder.encode(tiles)
    finally:
        encoder.model, encoder.device, encoder.autocast_dtype = model.to(device), device, dtype
        encoder._mean, encoder._std = encoder._mean.to(device), encoder._std.to(device)
    norms = np.linalg.norm(on_device, axis=1) * np.linalg.norm(reference, axis=1)
    return float(((on_device * reference).sum(axis=1) / norms).min())


def bench_slide(workdir: Path, side_px: int) -> Path:
    """A generated benchmark slide of ``side_px`` square (bench_extract's writer), written once."""
    import bench_extract

    path = workdir / f"bench_gpu_{side_px}_jpeg.tif"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        bench_extract.write_bench_slide(path, size_xy=(side_px, side_px))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    return path


def describe_device(device) -> str:
    """The device in words (GPU name and memory, or the CPU's core count)."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}"


def default_json_path() -> Path | None:
    """``$OUT/gpu_check.json`` when ``OUT`` is set, else None (no JSON)."""
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="timm architecture (repeatable)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (with --quick: a logic check)")
    parser.add_argument("--quick", action="store_true", help="tiny models, batch 16, small slide")
    parser.add_argument("--tiles", type=int, help="tissue tiles end to end (default 20000; quick 160)")
    parser.add_argument("--bare-tiles", type=int, help="tiles of the bare forward (default 8192; quick 64)")
    parser.add_argument("--batch-size", type=int, help="default 256; quick 16")
    parser.add_argument("--workers", type=int, default=None, help="reader threads (default: cores, max 16)")
    parser.add_argument("--slide", type=Path, help="a slide to use instead of the generated one")
    parser.add_argument("--json", type=Path, default=default_json_path(), help="write the figures here")
    default_workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    args = parser.parse_args(argv)

    import torch

    from napari_care.core.encoders.device import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as error:
        print(f"bench_gpu: {error}; on a machine without a GPU run: --device cpu --quick", file=sys.stderr)
        return 2
    models = args.model or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    batch_size = args.batch_size or (16 if args.quick else 256)
    n_tiles = args.tiles or (160 if args.quick else 20000)
    bare_tiles = args.bare_tiles or (64 if args.quick else 8192)
    slide_path = args.slide or bench_slide(args.workdir, QUICK_SLIDE_PX if args.quick else FULL_SLIDE_PX)
    workers = args.workers or min(16, os.cpu_count() or 1)
    header = {
        "device": describe_device(device),
        "host": f"{platform.node()}, {os.cpu_count()} cores",
        "reader_threads": workers,
        "batch_size": batch_size,
        "slide": slide_path.name,
        "quick": args.quick,
        "load_average_start": os.getloadavg()[0],
        "target_ratio": TARGET_RATIO,
    }
    print(
        f"device: {header['device']}; host: {header['host']}, reader threads {workers}; "
        f"load average {header['load_average_start']:.2f}"
    )
    print(f"slide: {slide_path.name}; batch size {batch_size}; channels-last")

    results = []
    for arch in models:
        encoder = build_encoder(arch, str(device))
        bare = bare_forward_rate(encoder, batch_size, bare_tiles)
        piped = pipeline_rate(encoder, slide_path, n_tiles, batch_size, workers)
        cosine = agreement(encoder, slide_path)
        ratio = piped["tiles_per_s"] / bare
        row = {
            "model": arch,
            "embed_dim": encoder.embed_dim,
            "autocast": str(encoder.autocast_dtype or "none").replace("torch.", ""),
            "bare_tiles_per_s": bare,
            "end_to_end_tiles_per_s": piped["tiles_per_s"],
            "ratio": ratio,
            "meets_target": ratio >= TARGET_RATIO,
            "min_cosine_vs_cpu_fp32": cosine,
            **{f"end_to_end_{key}": value for key, value in piped.items() if key != "tiles_per_s"},
        }
        results.append(row)
        verdict = "meets" if row["meets_target"] else "below"
        print(f"{arch} ({encoder.embed_dim} dims, autocast {row['autocast']})")
        print(f"  bare forward : {bare:8.1f} tiles/s (random tensors on the device)")
        print(
            f"  end to end   : {piped['tiles_per_s']:8.1f} tiles/s ({piped['tiles']} tissue tiles, "
            f"{piped['host_cores_busy']:.1f} host cores busy, "
            f"peak RSS +{piped['peak_rss_growth_mib']:.0f} MiB, "
            f"overlapped feed {piped['overlapped_feed']})"
        )
        print(f"  ratio        : {ratio:.2f} of the bare rate ({verdict} the {TARGET_RATIO:.2f} target)")
        print(f"  agreement    : min cosine {cosine:.5f} with float32 CPU features")
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = {
        **header,
        "models": results,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_end": os.getloadavg()[0],
    }
    print(
        f"peak RSS of the process: {summary['peak_rss_mib']:.0f} MiB; "
        f"load average {summary['load_average_end']:.2f}"
    )
    if args.json is not None:
        from napari_care.core.atomic import atomic_path

        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
