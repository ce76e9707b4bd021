"""Training and evaluation commands of ``napari-care``: ``pretrain care-stage1``, ``pretrain
care-stage2``, ``pretrain mixmag``, ``train-mil`` and ``evaluate``.

``register(main)`` adds them to the click group of :mod:`napari_care.cli`. Thin, like the
rest of the CLI: read the inputs, call the core, print. Exit codes: 0 done, 1 the work
failed, 2 bad input (unreadable file, wrong option, features that do not fit a checkpoint).
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

from napari_care._cli_common import EXIT_FAILED, drive, fail

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
    from napari_care.core.train.feature_views import load_feature_folder

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
    ]
    for option in reversed(options):
        function = option(function)
    return function


def care_config(in_dim: int, k: int, embed_dim: int, heads: int):
    """A CareConfig from the command line, or exit 2."""
    from napari_care.core.models.care import CareConfig

    return or_fail(CareConfig, in_dim=in_dim, embed_dim=embed_dim, heads=heads, k=k)


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
    def care_stage1(features_dir, out_dir, resume, checkpoint_every, seed, device, quiet, k, embed_dim, heads,
                    steps, batch_size, lr, max_patches) -> None:
        """Self-supervised Stage I (iBOT-style) on a folder of feature files (*.h5); no labels.

        Writes care_stage1_final.{json,safetensors,state.pt} to --out (the teacher CareModel,
        usable with `napari-care segment --care`).
        """
        from napari_care.core.train.care_stage1 import Stage1Config, train_care_stage1
        from napari_care.core.train.feature_views import encoder_name

        slides = read_features(features_dir)
        config = or_fail(Stage1Config, steps=steps, batch_size=batch_size, lr=lr, max_patches=max_patches,
                         checkpoint_every=checkpoint_every, seed=seed, device=device,
                         warmup_steps=min(50, steps // 10))
        model_config = None if resume else care_config(slides[0].feature_dim, k, embed_dim, heads)
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
                    embed_dim, heads, steps, batch_size, lr, top_k, log1p) -> None:
        """Stage II: align CARE slide embeddings with RNA, then protein profiles (InfoNCE).

        Tables are keyed by slide_id (or their first column), matching the feature files'
        names (A.h5 or A.features.h5 is slide A). Writes care_stage2_<rna|protein>_final.*.
        """
        from napari_care.core.molecular import load_protein_table, load_rna_table
        from napari_care.core.train.care_stage2 import Stage2Config, pretrain_care_stage2
        from napari_care.core.train.feature_views import encoder_name

        if rna is None and protein is None:
            fail("care-stage2 needs --rna, --protein or both")
        slides = read_features(features_dir)
        rna_table = or_fail(load_rna_table, rna, log1p=log1p) if rna else None
        protein_table = or_fail(load_protein_table, protein, top_k=top_k) if protein else None
        config = or_fail(Stage2Config, steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every,
                         seed=seed, device=device, warmup_steps=min(20, steps // 10))
        model_config = None if (init or resume) else care_config(slides[0].feature_dim, k, embed_dim, heads)
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
    @click.option("--readout", type=click.Choice(["cls", "tokens"]), default="cls", show_default=True)
    @click.option("--mask-ratio", type=float, default=0.5, show_default=True)
    @click.option("--dim", type=int, default=256, show_default=True, help="Transformer width.")
    @click.option("--depth", type=int, default=2, show_default=True, help="Transformer layers.")
    @click.option("--regions-per-slide", type=int, default=None, help="Region subsampling per slide.")
    def mixmag(tokens, out_dir, resume, checkpoint_every, seed, device, quiet, steps, batch_size, lr, objective,
               readout, mask_ratio, dim, depth, regions_per_slide) -> None:
        """MEM / CMEM pretraining of the mixed-magnification encoder on region tokens.

        TOKENS is a mixed-magnification feature file (<slide>.mixmag.h5, from `extract
        --mixmag`), a region-token .npz (keys tokens, token_present, region_coords,
        region_size_level0, slide_id), or a folder of either (one per slide). Writes mem_final.*.
        """
        from napari_care.core.models.mixmag import MixMagConfig
        from napari_care.core.train.mem import MEMTrainConfig, train_mem

        slides = or_fail(load_region_tokens, tokens)
        model_config = None if resume else or_fail(
            MixMagConfig, in_dim=slides[0].tokens.shape[-1], dim=dim, depth=depth, objective=objective,
            readout=readout, mask_ratio=mask_ratio)
        config = or_fail(MEMTrainConfig, steps=steps, batch_size=batch_size, lr=lr,
                         regions_per_slide=regions_per_slide, checkpoint_every=checkpoint_every, seed=seed,
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
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def train_mil_command(labels_csv, bags_dir, out_dir, mem_checkpoint, max_epochs, patience, lr, max_instances,
                          seed, device, quiet) -> None:
        """Train an AB-MIL head on slide labels (CSV: slide_id, label[, split]).

        BAGS_DIR holds one feature file per slide (<slide_id>.h5 or <slide_id>.features.h5),
        or, with --mem, one <slide_id>.mixmag.h5 (or region-token .npz) per slide. Writes abmil.*, predictions.csv,
        attention.npz and metrics.json to --out.
        """
        from napari_care.core.train.mil import MILTrainConfig, train_mil

        config = or_fail(MILTrainConfig, max_epochs=max_epochs, patience=patience, lr=lr,
                         max_instances=max_instances, seed=seed, device=device)
        bags, encoder = or_fail(read_bags, bags_dir, mem_checkpoint, device)
        result = run_or_fail(train_mil(labels_csv, bags, out_dir, config, encoder=encoder), quiet)
        metrics = result.metrics
        click.echo(f"test AUROC {metrics['test_auroc']}, balanced accuracy {metrics['test_balanced_accuracy']}, "
                   f"best epoch {metrics['best_epoch']}")
        click.echo(f"outputs: {out_dir}")

    @main.command()
    @click.argument("embeddings", type=click.Path(exists=True, path_type=Path))
    @click.argument("labels_csv", type=EXISTING_FILE)
    @click.option("--out", "report_path", type=ANY_PATH, required=True, help="Report (.json) to write.")
    @click.option("--task", type=click.Choice(["classification", "survival"]), default="classification",
                  show_default=True, help="Labels: slide_id,label or slide_id,time,event.")
    @click.option("--care", "care_checkpoint", type=EXISTING_FILE, default=None,
                  help="For a feature folder: the CARE checkpoint (default: training-free CARE).")
    @click.option("--which", type=click.Choice(["slide", "roi"]), default="slide", show_default=True,
                  help="For a feature folder: the slide embedding or the ROI feature.")
    @click.option("--folds", type=int, default=5, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--save-embeddings", type=ANY_PATH, default=None, help="Also write the embeddings (.npz).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def evaluate(embeddings, labels_csv, report_path, task, care_checkpoint, which, folds, seed, save_embeddings,
                 quiet) -> None:
        """The CARE paper's linear/kNN (or Cox) protocol on frozen slide embeddings.

        EMBEDDINGS: an .npz (arrays slide_id + embedding, or one array per slide id), a CSV
        (slide_id + numbers), or a folder of feature files (*.h5) embedded here with CARE.
        """
        from napari_care.core.evaluate import evaluate_embeddings

        slide_ids, vectors = or_fail(read_embeddings, embeddings, care_checkpoint, which, quiet)
        if save_embeddings:
            write_embeddings(save_embeddings, slide_ids, vectors)
        x, labels, used = or_fail(evaluation_inputs, slide_ids, vectors, labels_csv, task)
        if len(used) < len(slide_ids):
            click.echo(f"{len(slide_ids) - len(used)} slides with an embedding have no label", err=True)
        report = or_fail(evaluate_embeddings, x, labels, task=task, folds=folds, seed=seed)
        report.write_report(report_path)
        click.echo(f"{len(used)} slides, {folds} folds, task {task}")
        for model, metrics in report.summary.items():
            click.echo(f"{model:9} " + ", ".join(f"{name} {value['mean']:.3f} +- {value['std']:.3f}"
                                                 for name, value in metrics.items()))
        click.echo(f"report: {report_path}")


def load_region_tokens(path: Path) -> list:
    """:class:`~napari_care.core.models.mixmag.RegionTokens` from mixed-magnification feature
    files (``*.mixmag.h5``) or region-token ``.npz`` files (see ``pretrain mixmag``)."""
    import numpy as np

    from napari_care.core.mixmag_features import SUFFIX, load_mixmag
    from napari_care.core.models.mixmag import RegionTokens

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


def read_bags(bags_dir: Path, mem_checkpoint: Path | None, device: str) -> tuple[dict, str]:
    """slide_id -> instance features for AB-MIL, and the encoder name."""
    from napari_care.core.train.feature_views import encoder_name, load_feature_folder

    if mem_checkpoint is None:
        slides = load_feature_folder(bags_dir)
        return {slide.slide_id: slide.features for slide in slides}, encoder_name(slides)
    from napari_care.core.checkpoint import check_feature_dim, load_checkpoint
    from napari_care.core.models.mixmag import MixMagEncoder
    from napari_care.core.train.mem import region_bags

    slides = load_region_tokens(bags_dir)
    model, config, _ = load_checkpoint(mem_checkpoint, MixMagEncoder)
    check_feature_dim(config, slides[0].tokens.shape[-1], checkpoint=mem_checkpoint, encoder="of the tokens")
    return region_bags(model, slides, device=device), "mixmag"


def read_embeddings(path: Path, care_checkpoint: Path | None, which: str, quiet: bool):
    """(slide ids, ``[S, E]`` embeddings) from a file, or CARE on a feature folder."""
    if not path.is_dir():
        return load_embeddings(path)
    from napari_care.core.train.feature_views import encoder_name, iter_slide_embeddings, load_feature_folder

    slides = load_feature_folder(path)
    model = None
    if care_checkpoint is not None:
        from napari_care.core.checkpoint import check_feature_dim, load_checkpoint
        from napari_care.core.models.care import CareModel

        model, config, _ = load_checkpoint(care_checkpoint, CareModel)
        check_feature_dim(config, slides[0].feature_dim, checkpoint=care_checkpoint, encoder=encoder_name(slides))
    vectors = run_or_fail(iter_slide_embeddings(slides, model, which), quiet)
    return [slide.slide_id for slide in slides], vectors


def load_embeddings(path: Path):
    """Slide ids and ``[S, E]`` embeddings from an .npz or a CSV file."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "slide_id" in data.files:
                key = next((name for name in ("embedding", "embeddings") if name in data.files), None)
                if key is None:
                    raise ValueError(f"{path}: has slide_id but no 'embedding' array")
                slide_ids, vectors = [str(s) for s in data["slide_id"]], np.asarray(data[key], dtype=np.float64)
            else:
                slide_ids = list(data.files)
                vectors = np.stack([np.ravel(data[name]).astype(np.float64) for name in slide_ids]) \
                    if slide_ids else np.zeros((0, 0))
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
        if len(rows) < 2:
            raise ValueError(f"{path}: needs a header and at least one row")
        key = rows[0].index("slide_id") if "slide_id" in rows[0] else 0
        slide_ids = [row[key].strip() for row in rows[1:]]
        try:
            vectors = np.array([[float(c) for i, c in enumerate(row) if i != key] for row in rows[1:]])
        except ValueError as error:
            raise ValueError(f"{path}: embedding values must be numbers ({error})") from error
    else:
        raise ValueError(f"{path}: embeddings must be an .npz, a .csv or a folder of feature files")
    if vectors.ndim != 2 or len(vectors) != len(slide_ids) or not len(slide_ids):
        raise ValueError(f"{path}: expected one embedding vector per slide, got shape {vectors.shape}")
    if len(set(slide_ids)) != len(slide_ids):
        raise ValueError(f"{path}: slide ids are not unique")
    return slide_ids, vectors


def write_embeddings(path: Path, slide_ids: list[str], vectors) -> None:
    """Write slide ids and embeddings to an .npz (``slide_id``, ``embedding``) atomically."""
    import numpy as np

    from napari_care.core.atomic import atomic_open

    with atomic_open(path, "wb") as handle:
        np.savez(handle, slide_id=np.asarray(slide_ids, dtype=str), embedding=np.asarray(vectors, np.float32))


def evaluation_inputs(slide_ids: list[str], vectors, labels_csv: Path, task: str):
    """Embeddings and labels of the labelled slides that have an embedding, in label order.

    Classification labels: columns ``slide_id``, ``label``. Survival: ``slide_id``,
    ``time``, ``event`` (1 = event, 0 = censored).
    """
    import numpy as np

    with open(labels_csv, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    needed = ["slide_id", "label"] if task == "classification" else ["slide_id", "time", "event"]
    if not rows or not set(needed) <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs columns {needed}, found {sorted(rows[0]) if rows else []}")
    row_of = {slide_id: number for number, slide_id in enumerate(slide_ids)}
    used = [row for row in rows if row["slide_id"].strip() in row_of]
    if not used:
        raise ValueError(f"{labels_csv}: no labelled slide has an embedding "
                         f"(labels name e.g. {[r['slide_id'] for r in rows[:3]]}, embeddings {slide_ids[:3]})")
    x = np.asarray(vectors)[[row_of[row["slide_id"].strip()] for row in used]]
    if task == "classification":
        labels = np.array([row["label"].strip() for row in used])
    else:
        try:
            labels = np.array([[float(row["time"]), float(row["event"])] for row in used])
        except ValueError as error:
            raise ValueError(f"{labels_csv}: time and event must be numbers ({error})") from error
    return x, labels, [row["slide_id"].strip() for row in used]
