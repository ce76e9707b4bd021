"""Show that mixed magnification works: AB-MIL on 20x tiles against MEM-pretrained region tokens.

    python benchmarks/mixmag_experiment.py [--workdir /tmp/napari_care_mixmag] [--slides 32]
                                           [--size-px 3072] [--folds 4] [--repeats 2]
                                           [--mem-steps 1000] [--seed 0 [1 ...]] [--readout cls+tile]
                                           [--pools one] [--rows mem 20x random cls tokens]

Two generated cohorts (:mod:`napari_care.core.synthetic.cohort`), half positive each:
"architecture" (rings against straight cords of the same tumour bands: the label is in an
arrangement larger than a 20x tile) and "detail" (atypical nuclei in some tumour patches:
the label is in 20x detail). For every slide, the tiles at 5x, 10x and 20x of every region
on tissue (896 px at 20x) are encoded with the built-in ``default`` encoder
(:func:`~napari_care.core.mixmag_features.extract_mixmag`) and kept in ``--workdir``.

Rows, all with the same AB-MIL head and training loop (:func:`~napari_care.core.train.mil.train_mil`):

* MEM mixing: the mixing encoder pretrained by masked embedding modeling (compressed CLS),
  frozen, then AB-MIL on one token per region with the ``--readout`` of
  :class:`~napari_care.core.models.mixmag.MixMagConfig` (default ``cls+tile``: the CLS and
  the region's most salient 20x tile; ``cls``: the CLS alone);
* 20x only: AB-MIL on the 20x tile features (the 20x tiles of the same regions);
* random mixing: the same encoder with its random initial weights and the same readout;
* MEM CLS: the same pretrained encoder with the ``cls`` readout (CLS alone);
* MEM 20x tokens: MEM with the ``tokens`` readout (the 16 contextualised 20x tokens of
  each region, no compression), then AB-MIL.

``--pools two`` (with ``cls+tile``): the MEM and random mixing rows use the two-pool AB-MIL
(``ABMILConfig.split_at`` at the CLS width: one gated-attention head over the CLS columns,
one over the tile columns, the pooled features concatenated).

``cls`` and ``cls+tile`` pretrain identically (the masked tokens are predicted from the CLS),
so one pretrained encoder serves both.

The mixing encoder is pretrained once, without labels, on the regions of both cohorts; it
standardises the tile embeddings per dimension with the statistics of those regions and
whitens 20x tiles for ``cls+tile`` with their covariance (``MEMTrainConfig.standardise_tokens``);
its random twin uses the same statistics.
The AB-MIL head standardises its instance features itself (per dimension, statistics of
the training folds' instances); the region tokens enter MEM as extracted, as with
``napari-care pretrain``.
Evaluation: stratified k-fold cross-validation (test fold i, validation fold i+1, the rest
training), repeated with other fold and head seeds; the test predictions of a repeat's
folds are pooled into one AUROC. Printed: mean +- sd over repeats, tokens per slide and the
reduction against 20x. Everything is seeded; a second run reuses slides, features and the
pretrained encoder. ``--rows`` runs a subset of the rows (the reduction is always against
the 20x tiles). Several ``--seed`` values run the whole experiment once per seed (fresh
slides, features and MEM encoder: a held-out check of a recipe chosen on
another seed) and then print each row's mean and sd over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_care.core.atomic import atomic_open
from napari_care.core.checkpoint import load_checkpoint
from napari_care.core.encoders import create_encoder
from napari_care.core.evaluate import classification_metrics, fold_indices
from napari_care.core.mixmag_features import SUFFIX, extract_mixmag, load_mixmag, save_mixmag
from napari_care.core.models.mixmag import MixMagConfig, MixMagEncoder
from napari_care.core.progress import run_to_end
from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.cohort import COHORT_VERSION, KINDS, build_cohort
from napari_care.core.train.mem import MEMTrainConfig, region_bags, train_mem
from napari_care.core.train.mil import MILTrainConfig, train_mil

MEM_RECIPE = "2"  # bump when the MEM pretraining recipe changes (2: tile whitening in the checkpoint)
ROWS = (
    "MEM mixing + AB-MIL",
    "20x only AB-MIL",
    "random mixing + AB-MIL",
    "MEM CLS + AB-MIL",
    "MEM 20x tokens + AB-MIL",
)
ROW_KEYS = dict(zip(("mem", "20x", "random", "cls", "tokens"), ROWS, strict=True))  # --rows names


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:5.0f} s] {message}", flush=True)


def cohort_features(cohort, out_dir: Path, encoder) -> dict:
    """Mixed-magnification features of every slide of a cohort, extracted once and kept."""
    features = {}
    for slide_id, path in zip(cohort.slide_ids, cohort.slide_paths, strict=True):
        target = out_dir / f"{slide_id}{SUFFIX}"
        if not target.is_file():
            with open_slide(path) as slide:
                save_mixmag(target, run_to_end(extract_mixmag(slide, encoder, num_workers=2)))
        features[slide_id] = load_mixmag(target)
    return features


def mixing_encoders(slides: list, out_dir: Path, steps: int, seed: int, start: float, readout: str = "cls"):
    """The MEM-pretrained mixing encoder and its random initial twin (same seed, no training)."""
    config = MixMagConfig(
        in_dim=slides[0].tokens.shape[-1],
        dim=64,
        depth=2,
        heads=4,
        readout=readout,
        objective="mem",
        mask_ratio=0.5,
        loss="cosine",
    )
    if (out_dir / "mem_final.json").is_file():
        model, _, _ = load_checkpoint(out_dir / "mem_final.json", MixMagEncoder)
        log(f"MEM encoder reused from {out_dir}", start)
    else:
        train_config = MEMTrainConfig(
            steps=steps,
            batch_size=64,
            lr=1e-3,
            warmup_steps=steps // 10,
            log_every=max(1, steps // 4),
            seed=seed,
        )
        result = run_to_end(
            train_mem(slides, config, out_dir, train_config),
            lambda p: log(f"MEM {p.message}", start) if p.message.startswith("step") else None,
        )
        model = result.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # train_mem draws the initial weights the same way
        random_model = MixMagEncoder(config).eval()
    random_model.set_feature_stats(
        model.feature_mean, model.feature_std
    )  # same input scaling, untrained weights
    random_model.set_tile_whitening(model.tile_whitening)
    return model, random_model


def with_readout(model: MixMagEncoder, readout: str) -> MixMagEncoder:
    """The same encoder (weights and input statistics) with another compressed readout."""
    twin = MixMagEncoder(dataclasses.replace(model.config, readout=readout))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def write_split(path: Path, slide_ids, labels, split_of) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "split"])
        writer.writerows(zip(slide_ids, labels, split_of, strict=True))
    return path


def cross_validated_auroc(
    bags: dict,
    slide_ids: list,
    labels: np.ndarray,
    out_dir: Path,
    folds: int,
    repeats: int,
    split_at: int = 0,
    encoder: str = "default",
) -> list[float]:
    """Test AUROC of each repeat of k-fold CV, the folds' test predictions pooled."""
    aurocs = []
    for repeat in range(repeats):
        probability = np.zeros((len(labels), 2))
        for fold, (_, val, test) in enumerate(fold_indices(labels, folds, seed=repeat)):
            split_of = np.full(len(labels), "train", dtype=object)
            split_of[val], split_of[test] = "val", "test"
            csv_path = write_split(out_dir / f"r{repeat}_f{fold}" / "labels.csv", slide_ids, labels, split_of)
            config = MILTrainConfig(
                max_epochs=60, patience=15, lr=1e-3, seed=1000 * repeat + fold, split_at=split_at
            )
            model = run_to_end(train_mil(csv_path, bags, csv_path.parent, config, encoder=encoder)).model
            with torch.no_grad():
                for index in test:
                    logits, _ = model(torch.as_tensor(bags[slide_ids[index]]))
                    probability[index] = torch.softmax(logits, dim=-1).numpy()
        aurocs.append(float(classification_metrics(labels, probability)["auroc"]))
    return aurocs


def print_table(results: dict, tiles_20x: dict, folds: int, repeats: int) -> None:
    print(f"\nTest AUROC (k={folds} folds pooled, mean +- sd over {repeats} repeats); tokens per slide")
    print(f"{'set':13} {'row':24} {'AUROC':>15} {'tokens/slide':>13} {'reduction':>10} {'token dim':>10}")
    for kind, rows in results.items():
        base = tiles_20x[kind]  # mean 20x tiles per slide
        for row, values in rows.items():
            print(
                f"{kind:13} {row:24} {values['auroc']:7.3f} +- {values['auroc_sd']:.3f} "
                f"{values['tokens']:13.1f} {base / values['tokens']:9.1f}x {values['token_dim']:10d}"
            )


def run_seed(args, seed: int, encoder, start: float) -> tuple[dict, dict]:
    """Build, encode and evaluate the two cohorts of one seed: results and 20x tiles per slide, per set."""
    data = {}
    for kind in KINDS:
        tag = f"{kind}_n{args.slides}_px{args.size_px}_seed{seed}"
        cohort = build_cohort(
            args.workdir / "slides" / tag,
            kind,
            n_slides=args.slides,
            size_px=args.size_px,
            seed=seed,
            workers=2,
        )
        features = cohort_features(cohort, args.workdir / "features" / tag, encoder)
        data[kind] = (cohort, features)
        log(f"seed {seed} {kind}: {len(cohort.slide_ids)} slides built and encoded at 5x/10x/20x", start)
    tokens = {
        kind: [features[s].to_region_tokens() for s in cohort.slide_ids]
        for kind, (cohort, features) in data.items()
    }
    mem_name = (
        f"mem{MEM_RECIPE}_v{COHORT_VERSION}_n{args.slides}_px{args.size_px}_seed{seed}_steps{args.mem_steps}"
    )
    mem_dir = args.workdir / mem_name
    all_tokens = [t for slides in tokens.values() for t in slides]
    mem_model, random_model = mixing_encoders(all_tokens, mem_dir, args.mem_steps, seed, start)
    encoders = {
        ROWS[0]: with_readout(mem_model, args.readout),
        ROWS[2]: with_readout(random_model, args.readout),
        ROWS[3]: with_readout(mem_model, "cls"),
    }
    if "tokens" in args.rows:
        encoders[ROWS[4]], _ = mixing_encoders(
            all_tokens,
            mem_dir.with_name(mem_dir.name + "_tokens"),
            args.mem_steps,
            seed,
            start,
            readout="tokens",
        )
    results, tiles_20x = {}, {}
    for kind, (cohort, features) in data.items():
        tiles_20x[kind] = float(np.mean([len(features[s].levels[2].features) for s in cohort.slide_ids]))
        results[kind] = {}
        for key in args.rows:
            row, index = ROW_KEYS[key], ROWS.index(ROW_KEYS[key])
            row_bags = (
                {s: features[s].levels[2].features for s in cohort.slide_ids}
                if row == ROWS[1]
                else region_bags(encoders[row], tokens[kind])
            )
            out_dir = args.workdir / "mil" / f"{kind}_seed{seed}" / f"row{index}"
            split_at = mem_model.config.dim if args.pools == "two" and row in (ROWS[0], ROWS[2]) else 0
            aurocs = cross_validated_auroc(
                row_bags,
                list(cohort.slide_ids),
                np.array(cohort.labels),
                out_dir,
                args.folds,
                args.repeats,
                split_at,
                encoder="default" if row == ROWS[1] else "mixmag",
            )
            results[kind][row] = {
                "auroc": float(np.mean(aurocs)),
                "auroc_sd": float(np.std(aurocs)),
                "aurocs": aurocs,
                "tokens": float(np.mean([len(b) for b in row_bags.values()])),
                "token_dim": int(next(iter(row_bags.values())).shape[1]),
            }
            log(f"seed {seed} {kind} {row}: AUROC {np.round(aurocs, 3).tolist()}", start)
    return results, tiles_20x


def print_seed_summary(results_of_seed: dict) -> None:
    """Mean test AUROC over seeds (each seed: fresh slides and MEM), and per seed."""
    seeds = list(results_of_seed)
    print(f"\nOver seeds {seeds} (each seed's AUROC is the mean over its repeats)")
    print(f"{'set':13} {'row':24} {'mean':>6} {'sd':>6}  per seed")
    first = results_of_seed[seeds[0]]
    for kind, rows in first.items():
        for row in rows:
            per_seed = [results_of_seed[seed][kind][row]["auroc"] for seed in seeds]
            print(
                f"{kind:13} {row:24} {np.mean(per_seed):6.3f} {np.std(per_seed):6.3f}  "
                + " ".join(f"{value:.3f}" for value in per_seed)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/napari_care_mixmag"))
    parser.add_argument("--slides", type=int, default=32, help="slides per set (even)")
    parser.add_argument("--size-px", type=int, default=3072, help="slide side at 0.5 um/px")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=2, help="cross-validation repeats (fold and head seeds)"
    )
    parser.add_argument("--mem-steps", type=int, default=1000)
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the slides and of MEM; several: each is a fresh pair of sets, then a summary",
    )
    parser.add_argument(
        "--readout",
        choices=("cls+tile", "cls"),
        default="cls+tile",
        help="region readout of the MEM and random mixing rows",
    )
    parser.add_argument(
        "--pools",
        choices=("one", "two"),
        default="one",
        help="AB-MIL pools of the MEM and random mixing rows (two: CLS and tile pooled apart; cls+tile)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=tuple(ROW_KEYS),
        default=list(ROW_KEYS),
        help="rows to run: " + ", ".join(f"{key} = {row}" for key, row in ROW_KEYS.items()),
    )
    args = parser.parse_args()
    if args.pools == "two" and args.readout != "cls+tile":
        parser.error("--pools two needs --readout cls+tile (the CLS and tile column blocks)")
    torch.set_num_threads(1)  # tiny models: more threads only add overhead on a shared CPU
    start = time.perf_counter()
    encoder = create_encoder("default")
    results_of_seed = {}
    for seed in args.seed:
        results, tiles_20x = run_seed(args, seed, encoder, start)
        results_of_seed[seed] = results
        print(f"\nseed {seed}", end="")
        print_table(results, tiles_20x, args.folds, args.repeats)
    if len(args.seed) > 1:
        print_seed_summary(results_of_seed)
    with atomic_open(args.workdir / "results.json", "w") as handle:
        json.dump(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results_of_seed,
                "seconds": time.perf_counter() - start,
            },
            handle,
            indent=1,
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s; results in {args.workdir / 'results.json'}")


if __name__ == "__main__":
    main()
