"""MEM / CMEM pretraining speed: optimiser steps per second of ``train_mem``.

Runs the real training loop (batch sampling, masking, forward, backward, AdamW) on random
region tokens with the default encoder sizes (dim 256, depth 2, 4 heads; ``--dim`` sets the
width) for D = 96 and 768 and prints steps per second and regions per second (checkpoint
writing excluded). Then the inference side: regions per second of
``MixMagEncoder.mil_instances`` with the ``cls`` and ``cls+tile`` readouts (one token per
region; ``cls+tile`` also picks each region's most salient 20x tile).

    python benchmarks/bench_mem_pretrain.py [--dims 96 768] [--dim 256] [--steps 30]
                                            [--batch 64] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from napari_care.core.models.mixmag import N_TOKENS, MixMagConfig, MixMagEncoder, RegionTokens
from napari_care.core.progress import Progress
from napari_care.core.train.mem import MEMTrainConfig, train_mem


def random_slides(feature_dim: int, n_slides: int = 4, regions: int = 256) -> list[RegionTokens]:
    """Random tokens with about 15% of the 20x slots missing (tissue edges)."""
    rng = np.random.default_rng(0)
    slides = []
    for index in range(n_slides):
        tokens = rng.normal(size=(regions, N_TOKENS, feature_dim)).astype(np.float32)
        present = rng.random((regions, N_TOKENS)) > 0.15
        present[:, 0] = True
        slides.append(RegionTokens(tokens, present, np.zeros((regions, 2), np.int64), 896.0, f"slide{index}"))
    return slides


def steps_per_second(
    feature_dim: int, objective: str, steps: int, batch: int, device: str, dim: int
) -> float:
    """Steps per second after two warm-up steps, from the progress reports' timestamps."""
    stamps: list[float] = []
    config = MEMTrainConfig(steps=steps, batch_size=batch, warmup_steps=2, log_every=1, device=device)
    with tempfile.TemporaryDirectory() as out_dir:
        work = train_mem(
            random_slides(feature_dim),
            MixMagConfig(in_dim=feature_dim, dim=dim, objective=objective),
            out_dir,
            config,
        )
        for report in work:
            if isinstance(report, Progress) and report.message.startswith("step"):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
    measured = stamps[2:]
    return (len(measured) - 1) / (measured[-1] - measured[0])


def readout_regions_per_second(
    feature_dim: int, readout: str, dim: int, device: str, repeats: int = 3
) -> float:
    """Regions per second of ``mil_instances`` over one slide's 256 regions (best of ``repeats``)."""
    slide = random_slides(feature_dim, n_slides=1)[0]
    model = MixMagEncoder(MixMagConfig(in_dim=feature_dim, dim=dim, readout=readout)).to(device).eval()
    tokens, present = (
        torch.from_numpy(slide.tokens).to(device),
        torch.from_numpy(slide.token_present).to(device),
    )
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.mil_instances(tokens, present)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(tokens) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[96, 768])
    parser.add_argument("--dim", type=int, default=256, help="encoder width")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads, "
        f"batch {args.batch} regions x {N_TOKENS} tokens, encoder dim {args.dim} depth 2 heads 4"
    )
    print(f"{'D':>5} {'objective':>9} {'steps/s':>9} {'regions/s':>10}")
    for feature_dim in args.dims:
        for objective in ("mem", "cmem"):
            rate = steps_per_second(feature_dim, objective, args.steps, args.batch, args.device, args.dim)
            print(f"{feature_dim:>5} {objective:>9} {rate:>9.2f} {rate * args.batch:>10.0f}")
    print(
        "\nregion tokens for AB-MIL (inference, one token per region)\n"
        f"{'D':>5} {'readout':>9} {'regions/s':>10}"
    )
    for feature_dim in args.dims:
        for readout in ("cls", "cls+tile"):
            rate = readout_regions_per_second(feature_dim, readout, args.dim, args.device)
            print(f"{feature_dim:>5} {readout:>9} {rate:>10.0f}")


if __name__ == "__main__":
    main()
