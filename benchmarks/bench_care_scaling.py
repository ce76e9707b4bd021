"""How CARE's run time grows with the number of patches (it should be linear).

Times the training-free generator and a random-init CareModel (default sizes: D = 768,
E = 512, 8 heads, k = 8) on 1k, 10k and 100k patches of a disc-shaped tissue, and prints
seconds and the ratio per 10x more patches (10 means linear, 100 quadratic), and the
process's peak resident memory. Writes ``docs/results/care_scaling.json``.

    python benchmarks/bench_care_scaling.py [--sizes 1000 10000 100000] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_files import RESULTS, write_result


def disc_grid(n_patches: int) -> np.ndarray:
    """``[n, 2]`` grid cells of a disc (tissue-like outline: partly filled edge blocks)."""
    radius = int(np.ceil(np.sqrt(n_patches / np.pi))) + 2
    gx, gy = np.meshgrid(np.arange(2 * radius), np.arange(2 * radius))
    cells = np.stack([gx.ravel(), gy.ravel()], axis=1)
    distance = np.hypot(cells[:, 0] - radius, cells[:, 1] - radius)
    return cells[np.argsort(distance, kind="stable")[:n_patches]]


def best_time(run, repeats: int) -> float:
    """Shortest wall time of ``repeats`` runs, in seconds (the machine is shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768, help="patch feature dimension D")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size below 100k (best is kept)")
    parser.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    parser.add_argument("--skip-model", action="store_true", help="time the training-free mode only")
    parser.add_argument("--out", type=Path, default=RESULTS / "care_scaling.json")
    parser.add_argument("--no-result", action="store_true", help="print only")
    args = parser.parse_args()
    load_start = list(os.getloadavg())

    from napari_care.core.models.care_free import segment_free

    rng = np.random.default_rng(0)
    slides = {n: (rng.normal(size=(n, args.dim)).astype(np.float32), disc_grid(n)) for n in args.sizes}
    rows: dict[str, list[float]] = {"training-free": []}
    regions: list[int] = []
    segment_free(*slides[args.sizes[0]])  # warm-up
    for n, (features, grid) in slides.items():
        rows["training-free"].append(
            best_time(lambda f=features, g=grid: segment_free(f, g), 1 if n >= 100_000 else args.repeats)
        )
        regions.append(segment_free(features, grid).n_regions)

    if not args.skip_model:
        import torch

        from napari_care.core.models.care import CareConfig, CareModel

        torch.manual_seed(0)
        model = CareModel(CareConfig(in_dim=args.dim)).to(args.device).eval()
        name = f"model ({args.device}, {torch.get_num_threads()} threads)"
        rows[name] = []
        for n, (features, grid) in slides.items():
            tensor = torch.as_tensor(features, device=args.device)

            def run(tensor: torch.Tensor = tensor, grid: np.ndarray = grid) -> None:
                with torch.inference_mode():
                    model(tensor, grid).slide_embedding.sum().item()  # .item() waits for the device

            run()  # warm-up (kernels, allocator)
            rows[name].append(best_time(run, 1 if n >= 100_000 else args.repeats))

    print(f"{'patches':>10} {'regions':>8} " + " ".join(f"{name:>34}" for name in rows))
    for index, n in enumerate(args.sizes):
        cells = []
        for times in rows.values():
            ratio = f"(x{times[index] / times[index - 1]:.1f})" if index else ""
            cells.append(f"{times[index]:>24.3f} s {ratio:>7}")
        print(f"{n:>10} {regions[index]:>8} " + " ".join(cells))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mib:.0f} MiB; load average {load_start} -> {list(os.getloadavg())}")
    if not args.no_result:
        figures = {
            "sizes": args.sizes,
            "dim": args.dim,
            "repeats_below_100k": args.repeats,
            "device": args.device,
            "grid": "disc-shaped tissue, random normal features (seed 0)",
            "regions": regions,
            "seconds": {name: [round(t, 4) for t in times] for name, times in rows.items()},
            "peak_rss_mib": round(peak_mib, 1),
            "load_average_at_start": load_start,
        }
        print(write_result(args.out, "care_scaling", figures))


if __name__ == "__main__":
    main()
