"""GPU benchmark: a ViT through the project's pipeline against its bare forward rate.

    python benchmarks/bench_gpu.py                                   # ViT-B/16 and ViT-L/16 on CUDA
    python benchmarks/bench_gpu.py --model vit_tiny_patch16_224 --tiles 512 --device cpu   # logic check

For each model (timm, random weights: nothing is downloaded), on the same device:

- bare forward: the model alone on random, already normalised ``[B, 3, 224, 224]`` tensors
  on the device (bf16 autocast on CUDA, channels-last, inference mode), the rate a GPU
  could reach if reading cost nothing;
- pipeline: :func:`napari_care.core.extract.extract_features` with the same encoder object
  on a generated JPEG slide (the one ``bench_extract.py`` writes, ~22,700 tissue tiles of
  224 px at 0.5 um/px): threads decode and cut tiles, the encoder moves uint8 batches to
  the device, normalises them there and runs the model;
- the ratio pipeline / bare (target >= 0.80: reading never starves the GPU).

Tiles at 224 px go straight into the model (crop_pct 1.0, as the pathology presets do),
so the pipeline's only extra work on the device is the uint8 -> float normalisation.
Exits with a message, and status 2, when the device asked for is CUDA and there is none.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_extract's slide writer

DEFAULT_MODELS = ("vit_base_patch16_224", "vit_large_patch16_224")


def build_encoder(arch: str, device: str):
    """The project's timm encoder for ``arch`` with random weights, fed 224-px tiles as they are."""
    from napari_care.core.encoders import create_encoder

    encoder = create_encoder(f"timm:{arch}", weights="random", device=device)
    # timm's ImageNet crop_pct (0.9) would upsample every tile to 249 px and crop it back:
    # pointless on tiles cut at the right size, and not what the bare forward runs.
    encoder.cfg = dataclasses.replace(encoder.cfg, crop_pct=1.0)
    return encoder


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA timings need it)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def bare_forward_rate(encoder, batch_size: int, n_tiles: int, device: str) -> float:
    """Tiles per second of the model alone on random normalised tensors already on the device."""
    import torch

    size = encoder.cfg.input_size
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


def pipeline_rate(
    encoder, slide_path: Path, n_tiles: int, batch_size: int, workers: int
) -> tuple[float, int, float]:
    """Tiles/s of ``extract_features`` over the first ``n_tiles`` tissue tiles, the count, and peak RSS
    growth (MiB)."""
    from bench_extract import PeakRss

    from napari_care.core.extract import extract_features
    from napari_care.core.progress import run_to_end
    from napari_care.core.slide.handle import open_slide
    from napari_care.core.tiling import tile_grid

    with open_slide(slide_path) as slide:
        full = tile_grid(slide, mpp=0.5, tile_size_px=encoder.cfg.input_size)
        grid = full.take(np.arange(min(n_tiles, len(full))))
        # warm-up (cuDNN/cuBLAS heuristics, thread pools) on tiles outside the timed ones when
        # there are any, so that the timed run finds none of its file tiles cached
        spare = np.arange(len(grid), len(full)) if len(full) > len(grid) else np.arange(len(grid))[::-1]
        warm = full.take(spare[: 2 * batch_size])
        run_to_end(extract_features(slide, warm, encoder, batch_size=batch_size, num_workers=workers))
        with PeakRss() as rss:
            start = time.perf_counter()
            result = run_to_end(
                extract_features(slide, grid, encoder, batch_size=batch_size, num_workers=workers)
            )
            seconds = time.perf_counter() - start
    if result.features.shape != (len(grid), encoder.embed_dim) or not np.isfinite(result.features).all():
        raise RuntimeError(
            f"pipeline returned features of shape {result.features.shape} for {len(grid)} tiles"
        )
    return len(grid) / seconds, len(grid), rss.growth_mb


def describe_device(device: str) -> str:
    """The device in words (GPU name and memory, or the CPU's core count)."""
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        help=f"timm architecture (repeatable; default {', '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (for a logic check only)")
    parser.add_argument("--tiles", type=int, default=20000, help="tissue tiles through the pipeline")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="reader threads (default: cores, max 16)")
    parser.add_argument("--slide", type=Path, help="a slide to use instead of the generated one")
    default_workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA device here (torch.cuda.is_available() is False); run it on a machine "
            "with an NVIDIA GPU, or pass --device cpu --model vit_tiny_patch16_224 --tiles 512 "
            "to check the script",
            file=sys.stderr,
        )
        return 2
    from bench_extract import bench_slide

    slide_path = args.slide or bench_slide(args.workdir)
    workers = args.workers or min(16, os.cpu_count() or 1)
    print(
        f"device: {describe_device(args.device)}; host: {os.cpu_count()} cores, reader threads {workers}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"slide: {slide_path.name}; batch size {args.batch_size}; bf16 autocast on CUDA, channels-last")

    for arch in args.model or DEFAULT_MODELS:
        encoder = build_encoder(arch, args.device)
        bare = bare_forward_rate(encoder, args.batch_size, args.tiles, args.device)
        piped, n, rss_mib = pipeline_rate(encoder, slide_path, args.tiles, args.batch_size, workers)
        ratio = piped / bare
        verdict = "meets" if ratio >= 0.8 else "below"
        print(f"{arch} ({encoder.embed_dim} dims)")
        print(f"  bare forward : {bare:8.0f} tiles/s (random tensors on the device)")
        print(
            f"  pipeline     : {piped:8.0f} tiles/s "
            f"({n} tissue tiles, extract_features, peak RSS +{rss_mib:.0f} MiB)"
        )
        print(f"  ratio        : {ratio:.2f} of the bare rate ({verdict} the 0.80 target)")
        del encoder
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(
        f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
