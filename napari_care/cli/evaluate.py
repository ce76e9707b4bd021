"""``napari-care evaluate``: the CARE paper's linear/kNN (or Cox) protocol on frozen slide
embeddings read from a file or made here with CARE from a folder of feature files.

``register(main)`` adds it to the click group of :mod:`napari_care.cli.app`. Exit codes as the
other commands: 0 done, 1 the work failed, 2 bad input.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

from napari_care.cli.train import ANY_PATH, EXISTING_FILE, or_fail, run_or_fail


def register(main: click.Group) -> None:
    """Add ``evaluate`` to ``main`` (once)."""
    if "evaluate" in main.commands:
        return

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
        from napari_care.core.evaluate import evaluate_embeddings  # lazy: CLI start-up

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


def read_embeddings(path: Path, care_checkpoint: Path | None, which: str, quiet: bool):
    """(slide ids, ``[S, E]`` embeddings) from a file, or CARE on a feature folder."""
    if not path.is_dir():
        return load_embeddings(path)
    from napari_care.core.train.feature_views import (  # lazy: CLI start-up
        encoder_name,
        iter_slide_embeddings,
        load_feature_folder,
    )

    slides = load_feature_folder(path)
    model = None
    if care_checkpoint is not None:
        from napari_care.core.checkpoint import check_feature_dim, load_checkpoint  # lazy: CLI start-up
        from napari_care.core.models.care import CareModel  # lazy: CLI start-up

        model, config, _ = load_checkpoint(care_checkpoint, CareModel)
        check_feature_dim(config, slides[0].feature_dim, checkpoint=care_checkpoint, encoder=encoder_name(slides))
    vectors = run_or_fail(iter_slide_embeddings(slides, model, which), quiet)
    return [slide.slide_id for slide in slides], vectors


def load_embeddings(path: Path):
    """Slide ids and ``[S, E]`` embeddings from an .npz or a CSV file."""
    import numpy as np  # lazy: CLI start-up

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
    import numpy as np  # lazy: CLI start-up

    from napari_care.core.atomic import atomic_open  # lazy: CLI start-up

    with atomic_open(path, "wb") as handle:
        np.savez(handle, slide_id=np.asarray(slide_ids, dtype=str), embedding=np.asarray(vectors, np.float32))


def evaluation_inputs(slide_ids: list[str], vectors, labels_csv: Path, task: str):
    """Embeddings and labels of the labelled slides that have an embedding, in label order.

    Classification labels: columns ``slide_id``, ``label``. Survival: ``slide_id``,
    ``time``, ``event`` (1 = event, 0 = censored).
    """
    import numpy as np  # lazy: CLI start-up

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
