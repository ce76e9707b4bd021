"""``napari-care evaluate``: the CARE paper's linear/kNN (or Cox) protocol on frozen slide
embeddings read from a file or made here with CARE from a folder of feature files.

``register(main)`` adds it to the click group of :mod:`napari_care.cli.app`. Exit codes as the
other commands: 0 done, 1 the work failed, 2 bad input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from napari_care.cli.common import core_option, keyword_defaults, warn
from napari_care.cli.train import ANY_PATH, EXISTING_FILE, or_fail, run_or_fail


def evaluation_defaults() -> dict:
    """The core's defaults of the evaluation (protocol and embeddings)."""
    from napari_care.core.embedding_files import slide_embeddings  # lazy: CLI start-up
    from napari_care.core.evaluate import evaluate_embeddings  # lazy: CLI start-up

    return keyword_defaults(evaluate_embeddings) | keyword_defaults(slide_embeddings)


def register(main: click.Group) -> None:
    """Add ``evaluate`` to ``main`` (once)."""
    if "evaluate" in main.commands:
        return

    @main.command()
    @click.argument("embeddings", type=click.Path(exists=True, path_type=Path))
    @click.argument("labels_csv", type=EXISTING_FILE)
    @click.option("--out", "report_path", type=ANY_PATH, required=True, help="Report (.json) to write.")
    @core_option(
        evaluation_defaults,
        "--task",
        type=click.Choice(["classification", "survival"]),
        help="Labels: slide_id,label or slide_id,time,event.",
    )
    @click.option(
        "--care",
        "care_checkpoint",
        type=EXISTING_FILE,
        default=None,
        help="For a feature folder: the CARE checkpoint (default: training-free CARE).",
    )
    @core_option(
        evaluation_defaults,
        "--which",
        type=click.Choice(["slide", "roi"]),
        help="For a feature folder: the slide embedding or the ROI feature.",
    )
    @core_option(evaluation_defaults, "--folds", type=int)
    @core_option(evaluation_defaults, "--seed", type=int)
    @click.option("--save-embeddings", type=ANY_PATH, default=None, help="Also write the embeddings (.npz).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def evaluate(
        embeddings, labels_csv, report_path, task, care_checkpoint, which, folds, seed, save_embeddings, quiet
    ) -> None:
        """The CARE paper's linear/kNN (or Cox) protocol on frozen slide embeddings.

        EMBEDDINGS: an .npz (arrays slide_id + embedding, or one array per slide id), a CSV
        (slide_id + numbers), a folder of slide feature files (<stem>.slide_features.h5 as
        segment writes them, or TRIDENT's slide_features_<encoder>/), or a folder of patch
        feature files (*.h5, TRIDENT's or CLAM's layout) embedded here with CARE. Empty
        files (slides without tissue) are left out with a warning.
        """
        from napari_care.core import embedding_files  # lazy: CLI start-up
        from napari_care.core.evaluate import evaluate_embeddings  # lazy: CLI start-up

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            slide_ids, vectors = run_or_fail(
                embedding_files.slide_embeddings(embeddings, care_checkpoint, which), quiet
            )
        warn(str(warning.message) for warning in caught)
        if save_embeddings:
            embedding_files.save_embeddings(save_embeddings, slide_ids, vectors)
        x, labels, used = or_fail(embedding_files.labelled_embeddings, slide_ids, vectors, labels_csv, task)
        if len(used) < len(slide_ids):
            click.echo(f"{len(slide_ids) - len(used)} slides with an embedding have no label", err=True)
        report = or_fail(evaluate_embeddings, x, labels, task=task, folds=folds, seed=seed)
        report.write_report(report_path)
        click.echo(f"{len(used)} slides, {folds} folds, task {task}")
        for model, metrics in report.summary.items():
            click.echo(
                f"{model:9} "
                + ", ".join(
                    f"{name} {value['mean']:.3f} +- {value['std']:.3f}" for name, value in metrics.items()
                )
            )
        click.echo(f"report: {report_path}")
