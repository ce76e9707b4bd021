"""Training commands of ``napari-care``: ``pretrain care-stage1``, ``pretrain care-stage2``,
``pretrain mixmag`` and ``train-mil`` (``evaluate`` is in :mod:`napari_care.cli.evaluate`).

``register(main)`` adds them to the click group of :mod:`napari_care.cli.app`. Thin, like the
rest of the CLI: read the inputs, call the core, print. Exit codes: 0 done, 1 the work
failed, 2 bad input (unreadable file, wrong option, features that do not fit a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import click

from napari_care.cli.common import EXIT_FAILED, core_option, drive, fail, field_defaults

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
ANY_PATH = click.Path(path_type=Path)
LEARNING_RATE = click.FloatRange(min=0, min_open=True)  # 0 trains nothing: bad input, not a run


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


# The core's defaults of the commands' options, by name (click reads them when it needs them).


def care_defaults() -> dict:
    """:class:`~napari_care.core.models.care_config.CareConfig`'s defaults."""
    from napari_care.core.models.care_config import CareConfig  # lazy: CLI start-up

    return field_defaults(CareConfig)


def stage1_defaults() -> dict:
    """:class:`~napari_care.core.train.care_stage1_config.Stage1Config`'s defaults."""
    from napari_care.core.train.care_stage1_config import Stage1Config  # lazy: CLI start-up

    return field_defaults(Stage1Config)


def stage2_defaults() -> dict:
    """:class:`~napari_care.core.train.care_stage2_config.Stage2Config`'s defaults, and the protein table's
    (``top_k`` of :func:`~napari_care.core.molecular.load_protein_table`, a torch module)."""
    from napari_care.core.train.care_stage2_config import PROTEIN_TOP_K, Stage2Config  # lazy: CLI start-up

    return field_defaults(Stage2Config) | {"top_k": PROTEIN_TOP_K}


def mem_defaults() -> dict:
    """:class:`~napari_care.core.train.mem_config.MEMTrainConfig`'s defaults."""
    from napari_care.core.train.mem_config import MEMTrainConfig  # lazy: CLI start-up

    return field_defaults(MEMTrainConfig)


def mixmag_defaults() -> dict:
    """:class:`~napari_care.core.models.mixmag_config.MixMagConfig`'s defaults."""
    from napari_care.core.models.mixmag_config import MixMagConfig  # lazy: CLI start-up

    return field_defaults(MixMagConfig)


def mil_defaults() -> dict:
    """:class:`~napari_care.core.train.mil_config.MILTrainConfig`'s defaults."""
    from napari_care.core.train.mil_config import MILTrainConfig  # lazy: CLI start-up

    return field_defaults(MILTrainConfig)


def common_training_options(defaults):
    """Options shared by the pretraining commands, with the defaults of the command's config."""

    def decorate(function):
        options = [
            click.option("--out", "out_dir", type=ANY_PATH, required=True, help="Folder of the checkpoints."),
            click.option(
                "--resume", type=EXISTING_FILE, default=None, help="Checkpoint (.json) to resume from."
            ),
            core_option(
                defaults,
                "--checkpoint-every",
                type=int,
                help="Save a checkpoint every that many steps (0: only the final one).",
            ),
            core_option(defaults, "--seed", type=int, help="Seed of all randomness."),
            core_option(defaults, "--device", type=str, help="Torch device, e.g. cpu or cuda."),
            click.option("--quiet", is_flag=True, help="No progress bars."),
        ]
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def care_model_options(function):
    """Sizes of a new CARE model."""
    options = [
        core_option(care_defaults, "--k", type=int, help="Block side in patches."),
        core_option(care_defaults, "--embed-dim", type=int, help="Region/slide embedding width."),
        core_option(care_defaults, "--heads", type=int, help="Attention heads."),
        core_option(
            care_defaults,
            "--affinity-prior",
            type=click.Choice(["none", "input"]),
            help="none: the paper's generator; input: start from the training-free affinity "
            "(a new model cuts slides as training-free CARE; see docs/care.md). New models only: "
            "with --resume or --init the checkpoint's model config is used.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def care_config(in_dim: int, k: int, embed_dim: int, heads: int, affinity_prior: str = "none"):
    """A CareConfig from the command line, or exit 2."""
    from napari_care.core.models.care_config import CareConfig  # lazy: CLI start-up

    return or_fail(
        CareConfig, in_dim=in_dim, embed_dim=embed_dim, heads=heads, k=k, affinity_prior=affinity_prior
    )


def register(main: click.Group) -> None:
    """Add the training and evaluation commands to ``main`` (once)."""
    if "pretrain" in main.commands:
        return

    @main.group()
    def pretrain() -> None:
        """Pretrain CARE (Stage I, Stage II) or the mixed-magnification region encoder."""

    @pretrain.command("care-stage1")
    @click.argument("features_dir", type=EXISTING_DIR)
    @common_training_options(stage1_defaults)
    @care_model_options
    @core_option(stage1_defaults, "--steps", type=int, help="Optimiser steps.")
    @core_option(stage1_defaults, "--batch-size", type=int, help="Sub-slides per step.")
    @core_option(stage1_defaults, "--lr", type=LEARNING_RATE, help="Peak learning rate (AdamW).")
    @core_option(stage1_defaults, "--max-patches", type=int, help="Largest sub-slide, in patches.")
    @core_option(
        stage1_defaults,
        "--consistency-weight",
        type=float,
        help="Weight of the assignment-consistency loss (0: the paper's loss; 1 with --affinity-prior "
        "input is the recipe of docs/care.md).",
    )
    def care_stage1(
        features_dir,
        out_dir,
        resume,
        checkpoint_every,
        seed,
        device,
        quiet,
        k,
        embed_dim,
        heads,
        affinity_prior,
        steps,
        batch_size,
        lr,
        max_patches,
        consistency_weight,
    ) -> None:
        """Self-supervised Stage I (iBOT-style) on a folder of feature files (*.h5); no labels.

        Writes care_stage1_final.{json,safetensors,state.pt} to --out (the teacher CareModel,
        usable with `napari-care segment --care`).
        """
        from napari_care.core.train.care_stage1 import Stage1Config, train_care_stage1  # lazy: CLI start-up
        from napari_care.core.train.feature_views import encoder_name  # lazy: CLI start-up
        from napari_care.core.train.schedule import with_short_warmup  # lazy: CLI start-up

        slides = read_features(features_dir)
        config = or_fail(
            with_short_warmup,
            Stage1Config,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            max_patches=max_patches,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
            consistency_weight=consistency_weight,
        )
        model_config = (
            None if resume else care_config(slides[0].feature_dim, k, embed_dim, heads, affinity_prior)
        )
        result = run_or_fail(
            train_care_stage1(
                slides, model_config, out_dir, config, resume_from=resume, encoder=encoder_name(slides)
            ),
            quiet,
        )
        click.echo(
            f"{len(slides)} slides, {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
            f"{result.losses[-1]:.4f}"
        )
        click.echo(f"checkpoint: {result.checkpoint}")

    @pretrain.command("care-stage2")
    @click.argument("features_dir", type=EXISTING_DIR)
    @click.option(
        "--rna", type=EXISTING_FILE, default=None, help="RNA table (CSV/Parquet, slide_id + genes)."
    )
    @click.option(
        "--protein",
        type=EXISTING_FILE,
        default=None,
        help="Protein table (numeric protein columns, or the top proteins' names).",
    )
    @click.option(
        "--init",
        type=EXISTING_FILE,
        default=None,
        help="CARE checkpoint to start from (Stage I); without it a new model.",
    )
    @common_training_options(stage2_defaults)
    @care_model_options
    @core_option(stage2_defaults, "--steps", type=int, help="Optimiser steps per phase.")
    @core_option(stage2_defaults, "--batch-size", type=int, help="Slides per step.")
    @core_option(stage2_defaults, "--lr", type=LEARNING_RATE, help="Peak learning rate (AdamW).")
    @core_option(stage2_defaults, "--top-k", type=int, help="Protein tokens per slide.")
    @click.option("--log1p", is_flag=True, help="log(1 + x) the RNA values (raw counts or TPM).")
    def care_stage2(
        features_dir,
        rna,
        protein,
        init,
        out_dir,
        resume,
        checkpoint_every,
        seed,
        device,
        quiet,
        k,
        embed_dim,
        heads,
        affinity_prior,
        steps,
        batch_size,
        lr,
        top_k,
        log1p,
    ) -> None:
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
        from napari_care.core.train.schedule import with_short_warmup  # lazy: CLI start-up

        if rna is None and protein is None:
            fail("care-stage2 needs --rna, --protein or both")
        slides = read_features(features_dir)
        rna_table = or_fail(load_rna_table, rna, log1p=log1p) if rna else None
        protein_table = or_fail(load_protein_table, protein, top_k=top_k) if protein else None
        config = or_fail(
            with_short_warmup,
            Stage2Config,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
        )
        model_config = (
            None
            if (init or resume)
            else care_config(slides[0].feature_dim, k, embed_dim, heads, affinity_prior)
        )
        results = run_or_fail(
            pretrain_care_stage2(
                slides,
                rna_table,
                protein_table,
                out_dir,
                config,
                init=init,
                model_config=model_config,
                resume_from=resume,
                encoder=encoder_name(slides),
            ),
            quiet,
        )
        for result in results:
            click.echo(
                f"{result.modality}: {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
                f"{result.losses[-1]:.4f}, checkpoint {result.checkpoint}"
            )

    @pretrain.command("mixmag")
    @click.argument("tokens", type=click.Path(exists=True, path_type=Path))
    @common_training_options(mem_defaults)
    @core_option(mem_defaults, "--steps", type=int, help="Optimiser steps.")
    @core_option(mem_defaults, "--batch-size", type=int, help="Regions per step.")
    @core_option(mem_defaults, "--lr", type=LEARNING_RATE, help="Peak learning rate (AdamW).")
    @core_option(mixmag_defaults, "--objective", type=click.Choice(["mem", "cmem"]))
    @core_option(
        mixmag_defaults,
        "--readout",
        type=click.Choice(["cls", "cls+tile", "tokens"]),
        help="Region output for AB-MIL: cls (one token per region, the paper's), cls+tile (the CLS and "
        "the region's most salient 20x tile, one token per region; with train-mil --two-pools it "
        "kept 20x detail that cls lost in the generated sets, docs/mixmag.md), tokens (the 16 20x "
        "tokens).",
    )
    @core_option(mixmag_defaults, "--mask-ratio", type=float)
    @core_option(mixmag_defaults, "--dim", type=int, help="Transformer width.")
    @core_option(mixmag_defaults, "--depth", type=int, help="Transformer layers.")
    @core_option(mem_defaults, "--regions-per-slide", type=int, help="Region subsampling per slide.")
    @core_option(
        mem_defaults,
        "--standardise-tokens/--no-standardise-tokens",
        help="Standardise tile embeddings per dimension with the pretraining regions' mean and std, "
        "and whiten 20x tiles for cls+tile with their covariance (kept in the checkpoint; a "
        "resumed run keeps its own). Off: raw embeddings.",
    )
    def mixmag(
        tokens,
        out_dir,
        resume,
        checkpoint_every,
        seed,
        device,
        quiet,
        steps,
        batch_size,
        lr,
        objective,
        readout,
        mask_ratio,
        dim,
        depth,
        regions_per_slide,
        standardise_tokens,
    ) -> None:
        """MEM / CMEM pretraining of the mixed-magnification encoder on region tokens.

        TOKENS is a mixed-magnification feature file (<slide>.mixmag.h5, from `extract
        --mixmag`), a region-token .npz (keys tokens, token_present, region_coords,
        region_size_level0, slide_id), or a folder of either (one per slide). Writes mem_final.*.
        """
        from napari_care.core.models.mixmag import MixMagConfig  # lazy: CLI start-up
        from napari_care.core.train.bags import load_region_tokens  # lazy: CLI start-up
        from napari_care.core.train.mem import MEMTrainConfig, train_mem  # lazy: CLI start-up
        from napari_care.core.train.schedule import with_short_warmup  # lazy: CLI start-up

        slides = or_fail(load_region_tokens, tokens)
        model_config = (
            None
            if resume
            else or_fail(
                MixMagConfig,
                in_dim=slides[0].tokens.shape[-1],
                dim=dim,
                depth=depth,
                objective=objective,
                readout=readout,
                mask_ratio=mask_ratio,
            )
        )
        config = or_fail(
            with_short_warmup,
            MEMTrainConfig,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            regions_per_slide=regions_per_slide,
            standardise_tokens=standardise_tokens,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
        )
        result = run_or_fail(train_mem(slides, model_config, out_dir, config, resume_from=resume), quiet)
        click.echo(
            f"{len(slides)} slides, {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
            f"{result.losses[-1]:.4f}"
        )
        click.echo(f"checkpoint: {result.checkpoint}")

    @main.command("train-mil")
    @click.argument("labels_csv", type=EXISTING_FILE)
    @click.argument("bags_dir", type=EXISTING_DIR)
    @click.option("--out", "out_dir", type=ANY_PATH, required=True, help="Output folder.")
    @click.option(
        "--mem",
        "mem_checkpoint",
        type=EXISTING_FILE,
        default=None,
        help="MEM checkpoint: BAGS_DIR then holds *.mixmag.h5 (or region-token .npz) files "
        "turned into region bags.",
    )
    @core_option(mil_defaults, "--max-epochs", type=int)
    @core_option(mil_defaults, "--patience", type=int)
    @core_option(mil_defaults, "--lr", type=LEARNING_RATE)
    @core_option(
        mil_defaults,
        "--max-instances",
        type=click.IntRange(min=1),
        help="Instances drawn per training bag and step (default: all).",
    )
    @core_option(mil_defaults, "--seed", type=int)
    @core_option(mil_defaults, "--device", type=str)
    @click.option(
        "--two-pools",
        is_flag=True,
        help="With --mem and a cls+tile checkpoint: one attention pool over the CLS, one over the tile "
        "(docs/mixmag.md).",
    )
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def train_mil_command(
        labels_csv,
        bags_dir,
        out_dir,
        mem_checkpoint,
        max_epochs,
        patience,
        lr,
        max_instances,
        seed,
        device,
        two_pools,
        quiet,
    ) -> None:
        """Train an AB-MIL head on slide labels (CSV: slide_id, label[, split]).

        BAGS_DIR holds one feature file per slide (<slide_id>.h5 or <slide_id>.features.h5),
        or, with --mem, one <slide_id>.mixmag.h5 (or region-token .npz) per slide. Writes abmil.*,
        predictions.csv, attention.npz and metrics.json to --out.
        """
        from napari_care.core.train.bags import read_mil_bags, replace_region_encoder  # lazy: CLI start-up
        from napari_care.core.train.mil import MILTrainConfig, train_mil  # lazy: CLI start-up

        bags = or_fail(read_mil_bags, bags_dir, mem_checkpoint, device)
        if two_pools and not bags.cls_width:
            fail("--two-pools needs --mem with a checkpoint of the cls+tile readout")
        config = or_fail(
            MILTrainConfig,
            max_epochs=max_epochs,
            patience=patience,
            lr=lr,
            max_instances=max_instances,
            seed=seed,
            device=device,
            split_at=bags.cls_width if two_pools else 0,
        )
        result = run_or_fail(train_mil(labels_csv, bags.bags, out_dir, config, encoder=bags.encoder), quiet)
        # the viewer rebuilds region tokens with the mixing encoder kept beside the head
        if mem_checkpoint is not None and replace_region_encoder(out_dir, bags.region_encoder) is None:
            click.echo(
                "note: region tokens from .npz files do not name their patch encoder; the viewer cannot "
                "apply this head (train from .mixmag.h5 files for that)"
            )
        metrics = result.metrics
        click.echo(
            f"test AUROC {metrics['test_auroc']}, balanced accuracy {metrics['test_balanced_accuracy']}, "
            f"best epoch {metrics['best_epoch']}"
        )
        click.echo(f"outputs: {out_dir}")
