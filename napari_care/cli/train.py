"""Training commands of ``napari-care``: ``pretrain care-stage1``, ``pretrain care-stage2``,
``pretrain mixmag`` and ``train-mil`` (``evaluate`` is in :mod:`napari_care.cli.evaluate`).

``register(main)`` adds them to the click group of :mod:`napari_care.cli.app`. Thin, like the
rest of the CLI: read the inputs, call the core, print. Exit codes: 0 done, 1 the work
failed, 2 bad input (unreadable file, wrong option, features that do not fit a checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from napari_care.cli.common import EXIT_FAILED, drive, fail

if TYPE_CHECKING:
    from napari_care.core.mil.heads import RegionEncoder  # lazy: CLI start-up

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
ANY_PATH = click.Path(path_type=Path)


def run_or_fail(work, quiet: bool):
    """Drive a core generator; bad input exits 2, a failed run 1, each with one line."""
    try:
        return drive(work, quiet=quiet)
    except (FileNotFoundError, ValueError) as error:  # FeatureDimMismatch is a ValueError
        fail(str(error))
    except RuntimeError as error:
        fail(str(error), EXIT_FAILED)


def or_fail(function, *args, **kwargs):
    """``function(*args, **kwargs)``; a bad file or value exits 2 with one line."""
    try:
        return function(*args, **kwargs)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))


def read_features(folder: Path):
    """The slides of a feature folder, or exit 2."""
    from napari_care.core.train.feature_views import load_feature_folder  # lazy: CLI start-up

    return or_fail(load_feature_folder, folder)


def common_training_options(function):
    """Options shared by the pretraining commands."""
    options = [
        click.option("--out", "out_dir", type=ANY_PATH, required=True, help="Folder of the checkpoints."),
        click.option("--resume", type=EXISTING_FILE, default=None, help="Checkpoint (.json) to resume from."),
        click.option("--checkpoint-every", type=int, default=0, show_default=True,
                     help="Save a checkpoint every that many steps (0: only the final one)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of all randomness."),
        click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def care_model_options(function):
    """Sizes of a new CARE model."""
    options = [
        click.option("--k", type=int, default=8, show_default=True, help="Block side in patches."),
        click.option("--embed-dim", type=int, default=512, show_default=True, help="Region/slide embedding width."),
        click.option("--heads", type=int, default=8, show_default=True, help="Attention heads."),
        click.option("--affinity-prior", type=click.Choice(["none", "input"]), default="none", show_default=True,
                     help="none: the paper's generator; input: start from the training-free affinity "
                          "(a new model cuts slides as training-free CARE; see docs/care.md). New models only: "
                          "with --resume or --init the checkpoint's model config is used."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def care_config(in_dim: int, k: int, embed_dim: int, heads: int, affinity_prior: str = "none"):
    """A CareConfig from the command line, or exit 2."""
    from napari_care.core.models.care import CareConfig  # lazy: CLI start-up

    return or_fail(CareConfig, in_dim=in_dim, embed_dim=embed_dim, heads=heads, k=k, affinity_prior=affinity_prior)


def register(main: click.Group) -> None:
    """Add the training and evaluation commands to ``main`` (once)."""
    if "pretrain" in main.commands:
        return

    @main.group()
    def pretrain() -> None:
        """Pretrain CARE (Stage I, Stage II) or the mixed-magnification region encoder."""

    @pretrain.command("care-stage1")
    @click.argument("features_dir", type=EXISTING_DIR)
    @common_training_options
    @care_model_options
    @click.option("--steps", type=int, default=1000, show_default=True, help="Optimiser steps.")
    @click.option("--batch-size", type=int, default=8, show_default=True, help="Sub-slides per step.")
    @click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (AdamW).")
    @click.option("--max-patches", type=int, default=360, show_default=True, help="Largest sub-slide, in patches.")
    @click.option("--consistency-weight", type=float, default=0.0, show_default=True,
                  help="Weight of the assignment-consistency loss (0: the paper's loss; 1 with --affinity-prior "
                       "input is the recipe of docs/care.md).")
    def care_stage1(features_dir, out_dir, resume, checkpoint_every, seed, device, quiet, k, embed_dim, heads,
                    affinity_prior, steps, batch_size, lr, max_patches, consistency_weight) -> None:
        """Self-supervised Stage I (iBOT-style) on a folder of feature files (*.h5); no labels.

        Writes care_stage1_final.{json,safetensors,state.pt} to --out (the teacher CareModel,
        usable with `napari-care segment --care`).
        """
        from napari_care.core.train.care_stage1 import Stage1Config, train_care_stage1  # lazy: CLI start-up
        from napari_care.core.train.feature_views import encoder_name  # lazy: CLI start-up

        slides = read_features(features_dir)
        config = or_fail(Stage1Config, steps=steps, batch_size=batch_size, lr=lr, max_patches=max_patches,
                         checkpoint_every=checkpoint_every, seed=seed, device=device,
                         warmup_steps=min(50, steps // 10), consistency_weight=consistency_weight)
        model_config = None if resume else care_config(slides[0].feature_dim, k, embed_dim, heads, affinity_prior)
        result = run_or_fail(train_care_stage1(slides, model_config, out_dir, config, resume_from=resume,
                                               encoder=encoder_name(slides)), quiet)
        click.echo(f"{len(slides)} slides, {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
                   f"{result.losses[-1]:.4f}")
        click.echo(f"checkpoint: {result.checkpoint}")

    @pretrain.command("care-stage2")
    @click.argument("features_dir", type=EXISTING_DIR)
    @click.option("--rna", type=EXISTING_FILE, default=None, help="RNA table (CSV/Parquet, slide_id + genes).")
    @click.option("--protein", type=EXISTING_FILE, default=None,
                  help="Protein table (numeric protein columns, or the top proteins' names).")
    @click.option("--init", type=EXISTING_FILE, default=None,
                  help="CARE checkpoint to start from (Stage I); without it a new model.")
    @common_training_options
    @care_model_options
    @click.option("--steps", type=int, default=500, show_default=True, help="Optimiser steps per phase.")
    @click.option("--batch-size", type=int, default=16, show_default=True, help="Slides per step.")
    @click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (AdamW).")
    @click.option("--top-k", type=int, default=10, show_default=True, help="Protein tokens per slide.")
    @click.option("--log1p", is_flag=True, help="log(1 + x) the RNA values (raw counts or TPM).")
    def care_stage2(features_dir, rna, protein, init, out_dir, resume, checkpoint_every, seed, device, quiet, k,
                    embed_dim, heads, affinity_prior, steps, batch_size, lr, top_k, log1p) -> None:
        """Stage II: align CARE slide embeddings with RNA, then protein profiles (InfoNCE).

        Tables are keyed by slide_id (or their first column), matching the feature files'
        names (A.h5 or A.features.h5 is slide A). Writes care_stage2_<rna|protein>_final.*.
        """
        from napari_care.core.molecular import load_protein_table, load_rna_table  # lazy: CLI start-up
        from napari_care.core.train.care_stage2 import (  # lazy: CLI start-up
            Stage2Config,
            pretrain_care_stage2,
        )
        from napari_care.core.train.feature_views import encoder_name  # lazy: CLI start-up

        if rna is None and protein is None:
            fail("care-stage2 needs --rna, --protein or both")
        slides = read_features(features_dir)
        rna_table = or_fail(load_rna_table, rna, log1p=log1p) if rna else None
        protein_table = or_fail(load_protein_table, protein, top_k=top_k) if protein else None
        config = or_fail(Stage2Config, steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every,
                         seed=seed, device=device, warmup_steps=min(20, steps // 10))
        model_config = None if (init or resume) else care_config(slides[0].feature_dim, k, embed_dim, heads,
                                                                 affinity_prior)
        results = run_or_fail(pretrain_care_stage2(slides, rna_table, protein_table, out_dir, config, init=init,
                                                   model_config=model_config, resume_from=resume,
                                                   encoder=encoder_name(slides)), quiet)
        for result in results:
            click.echo(f"{result.modality}: {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
                       f"{result.losses[-1]:.4f}, checkpoint {result.checkpoint}")

    @pretrain.command("mixmag")
    @click.argument("tokens", type=click.Path(exists=True, path_type=Path))
    @common_training_options
    @click.option("--steps", type=int, default=2000, show_default=True, help="Optimiser steps.")
    @click.option("--batch-size", type=int, default=64, show_default=True, help="Regions per step.")
    @click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (AdamW).")
    @click.option("--objective", type=click.Choice(["mem", "cmem"]), default="mem", show_default=True)
    @click.option("--readout", type=click.Choice(["cls", "cls+tile", "tokens"]), default="cls", show_default=True,
                  help="Region output for AB-MIL: cls (one token per region, the paper's), cls+tile (the CLS and "
                       "the region's most salient 20x tile, one token per region; with train-mil --two-pools it "
                       "kept 20x detail that cls lost in the generated sets, docs/mixmag.md), tokens (the 16 20x "
                       "tokens).")
    @click.option("--mask-ratio", type=float, default=0.5, show_default=True)
    @click.option("--dim", type=int, default=256, show_default=True, help="Transformer width.")
    @click.option("--depth", type=int, default=2, show_default=True, help="Transformer layers.")
    @click.option("--regions-per-slide", type=int, default=None, help="Region subsampling per slide.")
    @click.option("--standardise-tokens/--no-standardise-tokens", default=True, show_default=True,
                  help="Standardise tile embeddings per dimension with the pretraining regions' mean and std, "
                       "and whiten 20x tiles for cls+tile with their covariance (kept in the checkpoint; a "
                       "resumed run keeps its own). Off: raw embeddings.")
    def mixmag(tokens, out_dir, resume, checkpoint_every, seed, device, quiet, steps, batch_size, lr, objective,
               readout, mask_ratio, dim, depth, regions_per_slide, standardise_tokens) -> None:
        """MEM / CMEM pretraining of the mixed-magnification encoder on region tokens.

        TOKENS is a mixed-magnification feature file (<slide>.mixmag.h5, from `extract
        --mixmag`), a region-token .npz (keys tokens, token_present, region_coords,
        region_size_level0, slide_id), or a folder of either (one per slide). Writes mem_final.*.
        """
        from napari_care.core.models.mixmag import MixMagConfig  # lazy: CLI start-up
        from napari_care.core.train.mem import MEMTrainConfig, train_mem  # lazy: CLI start-up

        slides = or_fail(load_region_tokens, tokens)
        model_config = None if resume else or_fail(
            MixMagConfig, in_dim=slides[0].tokens.shape[-1], dim=dim, depth=depth, objective=objective,
            readout=readout, mask_ratio=mask_ratio)
        config = or_fail(MEMTrainConfig, steps=steps, batch_size=batch_size, lr=lr,
                         regions_per_slide=regions_per_slide, standardise_tokens=standardise_tokens,
                         checkpoint_every=checkpoint_every, seed=seed,
                         device=device, warmup_steps=min(100, steps // 10))
        result = run_or_fail(train_mem(slides, model_config, out_dir, config, resume_from=resume), quiet)
        click.echo(f"{len(slides)} slides, {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
                   f"{result.losses[-1]:.4f}")
        click.echo(f"checkpoint: {result.checkpoint}")

    @main.command("train-mil")
    @click.argument("labels_csv", type=EXISTING_FILE)
    @click.argument("bags_dir", type=EXISTING_DIR)
    @click.option("--out", "out_dir", type=ANY_PATH, required=True, help="Output folder.")
    @click.option("--mem", "mem_checkpoint", type=EXISTING_FILE, default=None,
                  help="MEM checkpoint: BAGS_DIR then holds *.mixmag.h5 (or region-token .npz) files "
                       "turned into region bags.")
    @click.option("--max-epochs", type=int, default=50, show_default=True)
    @click.option("--patience", type=int, default=10, show_default=True)
    @click.option("--lr", type=float, default=2e-4, show_default=True)
    @click.option("--max-instances", type=int, default=None, help="Instances drawn per training bag and step.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--two-pools", is_flag=True,
                  help="With --mem and a cls+tile checkpoint: one attention pool over the CLS, one over the tile "
                       "(docs/mixmag.md).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def train_mil_command(labels_csv, bags_dir, out_dir, mem_checkpoint, max_epochs, patience, lr, max_instances,
                          seed, device, two_pools, quiet) -> None:
        """Train an AB-MIL head on slide labels (CSV: slide_id, label[, split]).

        BAGS_DIR holds one feature file per slide (<slide_id>.h5 or <slide_id>.features.h5),
        or, with --mem, one <slide_id>.mixmag.h5 (or region-token .npz) per slide. Writes abmil.*, predictions.csv,
        attention.npz and metrics.json to --out.
        """
        from napari_care.core.train.mil import MILTrainConfig, train_mil  # lazy: CLI start-up

        bags, encoder, cls_width, region_encoder = or_fail(read_bags, bags_dir, mem_checkpoint, device)
        if two_pools and not cls_width:
            fail("--two-pools needs --mem with a checkpoint of the cls+tile readout")
        config = or_fail(MILTrainConfig, max_epochs=max_epochs, patience=patience, lr=lr,
                         max_instances=max_instances, seed=seed, device=device,
                         split_at=cls_width if two_pools else 0)
        result = run_or_fail(train_mil(labels_csv, bags, out_dir, config, encoder=encoder), quiet)
        if mem_checkpoint is not None:  # the viewer rebuilds region tokens with the mixing encoder kept beside the head
            from napari_care.core.mil.heads import (  # lazy: CLI start-up
                REGION_ENCODER_FILE,
                save_region_encoder,
            )

            for stale in out_dir.glob(f"{REGION_ENCODER_FILE}.*"):  # never pair this head with an older encoder
                stale.unlink()
            if region_encoder is not None:
                save_region_encoder(out_dir, region_encoder)
            else:
                click.echo("note: region tokens from .npz files do not name their patch encoder; the viewer cannot "
                           "apply this head (train from .mixmag.h5 files for that)")
        metrics = result.metrics
        click.echo(f"test AUROC {metrics['test_auroc']}, balanced accuracy {metrics['test_balanced_accuracy']}, "
                   f"best epoch {metrics['best_epoch']}")
        click.echo(f"outputs: {out_dir}")


def load_region_tokens(path: Path) -> list:
    """:class:`~napari_care.core.models.mixmag.RegionTokens` from mixed-magnification feature
    files (``*.mixmag.h5``) or region-token ``.npz`` files (see ``pretrain mixmag``)."""
    import numpy as np  # lazy: CLI start-up

    from napari_care.core.mixmag_features import SUFFIX, load_mixmag  # lazy: CLI start-up
    from napari_care.core.models.mixmag import RegionTokens  # lazy: CLI start-up

    files = sorted([*path.glob("*.npz"), *path.glob(f"*{SUFFIX}")]) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no mixed-magnification feature files (*{SUFFIX}) or region tokens (*.npz)")
    slides = []
    for file in files:
        if file.suffix.lower() in (".h5", ".hdf5"):
            tokens = load_mixmag(file).to_region_tokens()
            tokens.slide_id = file.name.removesuffix(SUFFIX) if file.name.endswith(SUFFIX) else file.stem
            slides.append(tokens)
            continue
        try:
            data = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: not a readable .npz file ({error})") from error
        with data:
            missing = sorted({"tokens", "token_present"} - set(data.files))
            if missing:
                raise ValueError(f"{file}: not a region-token file (missing {missing})")
            tokens = np.asarray(data["tokens"], dtype=np.float32)
            coords = data["region_coords"] if "region_coords" in data.files else np.zeros((len(tokens), 2), np.int64)
            size = float(data["region_size_level0"]) if "region_size_level0" in data.files else 0.0
            slide_id = str(data["slide_id"]) if "slide_id" in data.files else file.name.removesuffix(".npz")
            slides.append(RegionTokens(tokens, np.asarray(data["token_present"], dtype=bool),
                                       np.asarray(coords, dtype=np.int64), size, slide_id))
    return slides


def read_bags(bags_dir: Path, mem_checkpoint: Path | None, device: str) -> tuple[dict, str, int, RegionEncoder | None]:
    """slide_id -> instance features for AB-MIL, the encoder name, the CLS width of a
    ``cls+tile`` region token (0 for other bags), and the
    :class:`~napari_care.core.mil.regions.RegionEncoder` that made region bags from
    ``.mixmag.h5`` files (None for patch features and ``.npz`` region tokens)."""
    from napari_care.core.train.feature_views import encoder_name, load_feature_folder  # lazy: CLI start-up

    if mem_checkpoint is None:
        slides = load_feature_folder(bags_dir)
        return {slide.slide_id: slide.features for slide in slides}, encoder_name(slides), 0, None
    from napari_care.core.checkpoint import check_feature_dim, load_checkpoint  # lazy: CLI start-up
    from napari_care.core.mil.heads import RegionEncoder  # lazy: CLI start-up
    from napari_care.core.mixmag_features import SUFFIX, load_mixmag  # lazy: CLI start-up
    from napari_care.core.models.mixmag import MixMagEncoder  # lazy: CLI start-up
    from napari_care.core.train.mem import region_bags  # lazy: CLI start-up

    slides = load_region_tokens(bags_dir)
    model, config, _ = load_checkpoint(mem_checkpoint, MixMagEncoder)
    check_feature_dim(config, slides[0].tokens.shape[-1], checkpoint=mem_checkpoint, encoder="of the tokens")
    cls_width = config.dim if config.readout == "cls+tile" else 0
    feature_files = sorted(bags_dir.glob(f"*{SUFFIX}")) if bags_dir.is_dir() else []
    region_encoder = (RegionEncoder.of_features(model, load_mixmag(feature_files[0]), feature_files[0])
                      if feature_files else None)
    return region_bags(model, slides, device=device), "mixmag", cls_width, region_encoder
