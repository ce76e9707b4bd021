"""CARE on generated slides with planted tissue types: do the regions, groups and training work?

Slides come from :func:`napari_care.core.synthetic.slides.build_synthetic_slide`: the offline
sample and held-out slides of its size (16384 x 12288 px at 0.5 um/px; layouts default,
islands, bands; seeds 11-13), and 36 small training slides (6144 x 4608 px, seeds
100-111). Features come from the real pipeline (tissue mask, 224 px tiles at 20x, the
built-in ``default`` encoder); truth = the planted type under each patch (its majority).
Slides and features are cached under ``$NAPARI_CARE_CACHE/care_experiments`` or else
``<tempdir>/napari_care_exp`` (the first run builds them: about 10 min on 2 shared cores).

(a) adaptive regions (training-free) vs fixed k x k blocks, same k: purity
    (achievable segmentation accuracy), boundary recall, region counts;
(b) phenotype groups of the regions vs the planted types (adjusted Rand index);
(c) Stage I on the 36 small slides (``CareConfig.affinity_prior="input"`` and
    ``Stage1Config.consistency_weight=1`` unless told otherwise): the loss falls; regions
    of the learned model (its checkpoints; step 0 = random init) on the held-out and the
    training slides vs training-free and fixed blocks;
(d) Stage II (``care_experiments_stage2.py``) on small slides whose "RNA" and "protein"
    profiles are functions of their tissue mix: slide -> profile retrieval top-1 before
    and after alignment (RNA phase, then protein phase), on training and held-out slides.

Everything is seeded (slides, k-means, initial weights, training steps).

    python benchmarks/care_experiments.py [--only a b c d] [--stage1-steps 300]
                                          [--stage2-steps 150] [--threads 2] [--large]
                                          [--affinity-prior input|none] [--stage1-seed 0]
                                          [--consistency-weight 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_care.core.models.care_free import CareFreeConfig
from napari_care.core.partition_metrics import (
    adjusted_rand_index,
    boundary_recall,
    fixed_block_partition,
    segmentation_accuracy,
)
from napari_care.core.progress import run_to_end
from napari_care.core.train.feature_views import SlideFeatures

LAYOUTS = ("default", "islands", "bands")
SAMPLE_SIZE = (16384, 12288)  # the offline sample's size (sample_data/offline_sample.json)
HELD_OUT = [(layout, seed, *SAMPLE_SIZE) for layout in LAYOUTS for seed in (11, 12, 13)]
SMALL = [(layout, seed, 6144, 4608) for layout in LAYOUTS for seed in range(100, 112)]
LARGE = [(layout, 11, 2 * SAMPLE_SIZE[0], 2 * SAMPLE_SIZE[1]) for layout in LAYOUTS]  # --large
N_TYPES = 7


def cache_root() -> Path:
    """Where generated slides and features go: never inside the repository."""
    override = os.environ.get("NAPARI_CARE_CACHE")
    return (
        Path(override).expanduser() / "care_experiments"
        if override
        else Path(tempfile.gettempdir()) / "napari_care_exp"
    )


@dataclass
class Generated:
    """A generated slide's features, the planted tissue type under each patch, and its group."""

    slide: SlideFeatures
    truth: np.ndarray
    group: str


def _features_of(slide_path: Path, synthetic, features_path: Path, truth_path: Path) -> None:
    from napari_care.core.encoders import create_encoder
    from napari_care.core.extract import extract_features
    from napari_care.core.features import save_features
    from napari_care.core.slide.handle import open_slide
    from napari_care.core.tiling import tile_grid
    from napari_care.core.tissue import tissue_mask

    with open_slide(slide_path) as handle:
        grid = tile_grid(handle, magnification=20, tile_size_px=224, tissue=tissue_mask(handle))
        features = run_to_end(extract_features(handle, grid, create_encoder("default")))
    save_features(features_path, features)
    np.save(truth_path, synthetic.truth_at(features.coords, features.patch_size_level0))


def _load(stem: str, group: str, root: Path | None = None) -> Generated:
    from napari_care.core.features import load_features

    folder = (root or cache_root()) / "features"
    features = load_features(folder / f"{stem}.features.h5")
    truth = np.load(folder / f"{stem}.truth.npy")
    return Generated(SlideFeatures(features.features, features.grid, stem, features.encoder), truth, group)


def generated(
    layout: str, seed: int, width: int, height: int, *, root: Path | None = None, workers: int | None = None
) -> Generated:
    """Build (once) a synthetic slide, extract its features (once) and read the truth.

    ``root``: the cache folder (default :func:`cache_root`); ``workers``: the slide build's
    threads (default: the builder's).
    """
    from napari_care.core.synthetic.slides import build_synthetic_slide

    root = root or cache_root()
    stem = f"{layout}_s{seed}_{width}x{height}"
    features_path = root / "features" / f"{stem}.features.h5"
    truth_path = features_path.with_name(f"{stem}.truth.npy")
    if not (features_path.exists() and truth_path.exists()):
        slide_path = root / "slides" / f"{stem}.ome.tif"
        slide_path.parent.mkdir(parents=True, exist_ok=True)
        features_path.parent.mkdir(parents=True, exist_ok=True)
        options = {} if workers is None else {"workers": workers}
        synthetic = build_synthetic_slide(
            slide_path, width=width, height=height, seed=seed, layout=layout, **options
        )
        _features_of(slide_path, synthetic, features_path, truth_path)
    return _load(stem, layout, root)


def offline_sample() -> Generated:
    """The offline sample (built once in the sample cache), its features and truth."""
    from napari_care.core.samples import offline_sample_path
    from napari_care.core.synthetic.slides import load_synthetic_slide

    path = offline_sample_path()
    stem = path.name.removesuffix(".ome.tif")
    features_path = cache_root() / "features" / f"{stem}.features.h5"
    truth_path = features_path.with_name(f"{stem}.truth.npy")
    if not (features_path.exists() and truth_path.exists()):
        features_path.parent.mkdir(parents=True, exist_ok=True)
        _features_of(path, load_synthetic_slide(path), features_path, truth_path)
    return _load(stem, "sample")


def cohort(specs) -> list[Generated]:
    started = time.perf_counter()
    slides = [generated(*spec) for spec in specs]
    patches = sum(len(item.truth) for item in slides)
    print(f"  {len(slides)} slides, {patches} patches ({time.perf_counter() - started:.0f} s incl. cache)")
    return slides


def partition_scores(region_of_patch: np.ndarray, item: Generated) -> tuple[float, float, int]:
    """Purity, boundary recall (tolerance 0) and number of regions."""
    return (
        segmentation_accuracy(region_of_patch, item.truth),
        boundary_recall(region_of_patch, item.truth, item.slide.grid),
        len(np.unique(region_of_patch)),
    )


def table(title: str, header: list[str], rows: list[list]) -> None:
    """Print a plain table."""
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(f"{_fmt(v):>{w}}" for v, w in zip(row, widths, strict=True)))


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def by_group(items: list[Generated], scores: list[list[float]]) -> list[list]:
    """Mean of per-slide score rows per group (sample, layouts), over the held-out slides and the 2x ones."""
    summaries = {group: [group] for group in dict.fromkeys(item.group for item in items)}
    summaries |= {"held-out": LAYOUTS, "2x size": [f"{layout} 2x" for layout in LAYOUTS]}
    rows = []
    for name, groups in summaries.items():
        picked = [s for item, s in zip(items, scores, strict=True) if item.group in groups]
        if picked:
            rows.append(
                [name, len(picked)] + [float(np.mean(column)) for column in zip(*picked, strict=True)]
            )
    return rows


def experiment_regions(items: list[Generated]) -> None:
    """(a) training-free adaptive regions vs fixed blocks, same k."""
    from napari_care.core.care_run import segment_features

    for k in (8, 4):
        scores = []
        for item in items:
            free = segment_features(item.slide.features, item.slide.grid, config=CareFreeConfig(k=k))
            adaptive = partition_scores(free.region_of_patch, item)
            fixed = partition_scores(fixed_block_partition(item.slide.grid, k), item)
            scores.append(
                [len(item.truth), adaptive[2], fixed[2], adaptive[0], fixed[0], adaptive[1], fixed[1]]
            )
        rows = [row[:2] + [round(v) for v in row[2:5]] + row[5:] for row in by_group(items, scores)]
        table(
            f"(a) regions vs planted types, k = {k} (means per slide)",
            [
                "slides",
                "n",
                "patches",
                "regions",
                "blocks",
                "purity adaptive",
                "purity fixed",
                "bnd recall adaptive",
                "bnd recall fixed",
            ],
            rows,
        )


def n_planted(item: Generated) -> int:
    """Number of phenotype groups asked for: planted types with at least 2% of the patches."""
    return int((np.bincount(item.truth, minlength=N_TYPES) >= 0.02 * len(item.truth)).sum())


GROUP_SEEDS = range(5)  # k-means seeds of the phenotype groups: (b) reports their mean and spread


def groups_of(result, item: Generated, seed: int = 0, descriptor: str = "median") -> float:
    """ARI of the phenotype groups (default grouping, ``n_planted`` groups) vs the truth."""
    from napari_care.core.phenotypes import phenotype_groups

    groups = phenotype_groups(
        result, n_groups=n_planted(item), patch_features=item.slide.features, descriptor=descriptor, seed=seed
    )
    return adjusted_rand_index(groups.group_of_patch, item.truth)


def majority_ceiling(result, item: Generated) -> float:
    """ARI when every region takes its majority planted type: the best any grouping of these regions
    can do."""
    counts = np.zeros((result.n_regions, N_TYPES))
    np.add.at(counts, (result.region_of_patch, item.truth), 1)
    return adjusted_rand_index(counts.argmax(axis=1)[result.region_of_patch], item.truth)


def experiment_groups(items: list[Generated]) -> None:
    """(b) phenotype groups vs planted types; the regions' ceiling and patch-level k-means as references."""
    from sklearn.cluster import KMeans

    from napari_care.core.care_run import segment_features

    scores, per_seed = [], []
    for item in items:
        row, seeds_row = [], []
        for k in (8, 4):
            result = segment_features(item.slide.features, item.slide.grid, config=CareFreeConfig(k=k))
            by_seed = [groups_of(result, item, seed) for seed in GROUP_SEEDS]
            row += [
                float(np.mean(by_seed)),
                majority_ceiling(result, item),
                groups_of(result, item, 0, "embedding"),
            ]
            seeds_row.append(by_seed)
        x = item.slide.features
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
        patches = KMeans(n_planted(item), n_init=10, random_state=0).fit_predict(x)
        scores.append([*row, adjusted_rand_index(patches, item.truth)])
        per_seed.append(seeds_row)
    table(
        "(b) phenotype groups (weighted k-means of region median descriptors, N = planted types >= 2%; "
        f"mean over k-means seeds {list(GROUP_SEEDS)}) vs planted types: adjusted Rand index "
        "(target >= 0.6); 'embedding' = k-means of the region embeddings (seed 0)",
        [
            "slides",
            "n",
            "ARI k=8",
            "ceiling k=8",
            "embedding k=8",
            "ARI k=4",
            "ceiling k=4",
            "embedding k=4",
            "k-means of patches",
        ],
        by_group(items, scores),
    )
    # Spread: the set's mean ARI for each k-means seed (sd over seeds), and the sd over slides.
    for name, picked in (
        ("offline sample + held-out", [i for i, item in enumerate(items) if "2x" not in item.group]),
        ("2x size", [i for i, item in enumerate(items) if "2x" in item.group]),
    ):
        if picked:
            for column, k in enumerate((8, 4)):
                values = np.array([per_seed[i][column] for i in picked])  # [slides, seeds]
                print(
                    f"  {name}, k = {k}: ARI {values.mean():.3f}, "
                    f"sd over seeds {values.mean(axis=0).std():.3f}, "
                    f"sd over slides {values.mean(axis=1).std():.3f}"
                )


def stage1(
    small: list[Generated],
    steps: int,
    k: int,
    affinity_prior: str = "input",
    consistency_weight: float = 1.0,
    seed: int = 0,
):
    """Stage I on the small slides; prints the loss table, returns the result."""
    from napari_care.core.models.care import CareConfig
    from napari_care.core.train.care_stage1 import Stage1Config, train_care_stage1

    care_config = CareConfig(
        in_dim=small[0].slide.feature_dim, embed_dim=64, heads=4, k=k, affinity_prior=affinity_prior
    )
    config = Stage1Config(
        steps=steps,
        batch_size=8,
        lr=5e-4,
        warmup_steps=steps // 10,
        log_every=max(1, steps // 5),
        consistency_weight=consistency_weight,
        seed=seed,
        checkpoint_every=max(1, steps // 3),
    )
    out_dir = cache_root() / "stage1"
    for stale in out_dir.glob("care_stage1_step*"):  # checkpoints of an earlier run with other steps
        stale.unlink()
    started = time.perf_counter()
    result = run_to_end(
        train_care_stage1([item.slide for item in small], care_config, out_dir, config),
        lambda p: print(f"  {p.message}"),
    )
    seconds = time.perf_counter() - started
    window = max(1, steps // 10)
    rows = [
        [name, float(np.mean(values[:window])), float(np.mean(values[-window:]))]
        for name, values in [("total", result.losses), *result.components.items()]
    ]
    table(
        f"(c) Stage I on {len(small)} slides, {steps} steps of 8 sub-slides x 2 views ({seconds:.0f} s): "
        f"loss, mean of first vs last {window} steps",
        ["loss", "first", "last"],
        rows,
    )
    return result, care_config


def experiment_stage1_regions(held_out: list[Generated], small: list[Generated], result, care_config) -> None:
    """(c) regions of the Stage I model (its checkpoints; step 0 = random init) vs training-free and
    fixed blocks."""
    from napari_care.core.care_run import segment_features
    from napari_care.core.checkpoint import load_checkpoint
    from napari_care.core.models.care import CareModel

    checkpoints = sorted(result.checkpoint.parent.glob("care_stage1_step*.json"))
    models = [
        (int(path.stem.removeprefix("care_stage1_step")), load_checkpoint(path, CareModel)[0])
        for path in checkpoints
    ] + [(len(result.losses), result.model)]
    torch.manual_seed(0)
    models.insert(0, (0, CareModel(care_config)))
    rows = []
    for slides, name in ((held_out, "held-out + sample"), (small, "training")):
        free = [
            segment_features(i.slide.features, i.slide.grid, config=CareFreeConfig(k=care_config.k))
            for i in slides
        ]
        rows.append([name, "training-free", *_means(free, slides), 1.0])
        for step, model in models:
            results = [segment_features(i.slide.features, i.slide.grid, model=model.eval()) for i in slides]
            same = np.mean(
                [(r.candidate_rank == f.candidate_rank).mean() for r, f in zip(results, free, strict=True)]
            )
            rows.append([name, f"Stage I, step {step}", *_means(results, slides), float(same)])
        fixed = [partition_scores(fixed_block_partition(i.slide.grid, care_config.k), i) for i in slides]
        rows.append(
            [
                name,
                "fixed blocks",
                *[float(np.mean(c)) for c in list(zip(*fixed, strict=True))[:2]],
                float(np.mean([c[2] for c in fixed])),
                "",
                "",
                "",
            ]
        )
    table(
        f"(c) regions of the Stage I model during training (k = {care_config.k}, affinity_prior = "
        f"{care_config.affinity_prior!r}; step 0 = random init; means "
        "per slide; moved = share of patches that left their own block; ARI of phenotype groups; "
        "as free = share of patches that choose as the training-free generator)",
        ["slides", "model", "purity", "bnd recall", "regions", "moved", "ARI", "as free"],
        rows,
    )
    if care_config.affinity_prior == "input":
        print(
            "  learned weights in log rho (training-free affinity, learned affinity): "
            + ", ".join(
                f"step {step}: {model.log_prior_scale.exp().item():.3f}, {model.affinity_scale.item():.3f}"
                for step, model in models
            )
        )


def _means(results, slides: list[Generated]) -> list[float]:
    """Mean purity, boundary recall, region count, share of patches that left their own block, group ARI."""
    scored = [partition_scores(r.region_of_patch, item) for r, item in zip(results, slides, strict=True)]
    return [
        float(np.mean([s[0] for s in scored])),
        float(np.mean([s[1] for s in scored])),
        float(np.mean([s[2] for s in scored])),
        float(np.mean([(r.candidate_rank > 0).mean() for r in results])),
        float(np.mean([groups_of(r, item) for r, item in zip(results, slides, strict=True)])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--stage2-steps", type=int, default=150)
    parser.add_argument(
        "--large", action="store_true", help="(a, b) also on 3 slides of twice the sample's size"
    )
    parser.add_argument("--k", type=int, default=4, help="block side of the trained models (c, d)")
    parser.add_argument(
        "--affinity-prior",
        default="input",
        choices=["input", "none"],
        help="CareConfig.affinity_prior of the trained models (c, d)",
    )
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=1.0,
        help="Stage1Config.consistency_weight of the Stage I run (c, d)",
    )
    parser.add_argument("--stage1-seed", type=int, default=0, help="Stage1Config.seed (c, d)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"cache: {cache_root()}")
    print(f"offline sample and held-out slides ({len(HELD_OUT)}, {SAMPLE_SIZE[0]} x {SAMPLE_SIZE[1]} px):")
    held_out = cohort(HELD_OUT)
    evaluated = [offline_sample(), *held_out]
    if args.large:
        print(f"slides of twice the sample's size ({len(LARGE)}, {LARGE[0][2]} x {LARGE[0][3]} px):")
        large = [dataclasses.replace(item, group=f"{item.group} 2x") for item in cohort(LARGE)]
    else:
        large = []
    if "a" in args.only:
        experiment_regions(evaluated + large)
    if "b" in args.only:
        experiment_groups(evaluated + large)
    if {"c", "d"} & set(args.only):
        print(f"\nsmall slides for training ({len(SMALL)}, {SMALL[0][2]} x {SMALL[0][3]} px):")
        small = cohort(SMALL)
        result, care_config = stage1(
            small, args.stage1_steps, args.k, args.affinity_prior, args.consistency_weight, args.stage1_seed
        )
        if "c" in args.only:
            experiment_stage1_regions(evaluated, small, result, care_config)
        if "d" in args.only:
            from care_experiments_stage2 import experiment_stage2

            experiment_stage2(small, result.model, args.stage2_steps)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
