"""Experiment (d) of ``care_experiments.py``: Stage II on small generated slides.

Each small slide gets an "RNA" and a "protein" profile that are functions of its tissue
mix; slide -> profile retrieval top-1 before and after alignment (RNA phase, then protein
phase from its model), on training slides and on held-out small slides. Run it through
``python benchmarks/care_experiments.py --only d``.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
from care_experiments import N_TYPES, Generated, cache_root, table

from napari_care.core.progress import run_to_end


def tissue_mix(items: list[Generated]) -> np.ndarray:
    """``[S, 6]`` share of each planted tissue type (glass left out) among a slide's patches."""
    return np.stack([np.bincount(item.truth, minlength=N_TYPES)[1:] / len(item.truth) for item in items])


def molecular_tables(items: list[Generated], genes: int = 100, proteins: int = 40, top_k: int = 10):
    """RNA values and top-k protein tokens that are smooth functions of each slide's tissue mix
    (plus noise)."""
    from napari_care.core.molecular import ProteinTable, RNATable

    mix = tissue_mix(items)
    rng = np.random.default_rng(7)
    ids = tuple(item.slide.slide_id for item in items)
    rna = np.log1p(np.exp(4 * mix @ rng.normal(size=(N_TYPES - 1, genes)))) + 0.05 * rng.normal(
        size=(len(ids), genes)
    )
    protein = mix @ rng.normal(size=(N_TYPES - 1, proteins)) + 0.02 * rng.normal(size=(len(ids), proteins))
    tokens = np.argsort(-protein, axis=1, kind="stable")[:, :top_k]
    return (
        RNATable(ids, rna.astype(np.float32), tuple(f"gene{i}" for i in range(genes))),
        ProteinTable(ids, tokens.astype(np.int64), tuple(f"protein{i}" for i in range(proteins))),
    )


def subset(table, slide_ids: list[str]):
    """The same molecular table restricted to some slides."""
    from napari_care.core.molecular import RNATable

    field = "values" if isinstance(table, RNATable) else "tokens"
    return dataclasses.replace(table, slide_ids=tuple(slide_ids), **{field: table.rows(slide_ids)})


def _phase_start(care, table, config, head_state=None):
    """The network a Stage II phase starts from (same seeding as ``train_care_stage2``)."""
    from napari_care.core.molecular import molecular_encoder
    from napari_care.core.train.care_stage2 import Stage2Network

    torch.manual_seed(config.seed)
    molecular = molecular_encoder(table, out_dim=config.proj_dim, dim=config.molecular_dim)
    torch.manual_seed(config.seed + 1)
    network = Stage2Network(copy.deepcopy(care), molecular, config)
    if head_state is not None:
        network.slide_head.load_state_dict(head_state)
    return network


def experiment_stage2(small: list[Generated], stage1_model, steps: int) -> None:
    """(d) retrieval top-1 before and after each Stage II phase (RNA, then protein)."""
    from napari_care.core.train import care_stage2 as stage2

    test = [item for i, item in enumerate(small) if i % 4 == 3]
    train = [item for i, item in enumerate(small) if i % 4 != 3]
    rna_all, protein_all = molecular_tables(small)
    train_ids = [item.slide.slide_id for item in train]
    train_slides, test_slides = [i.slide for i in train], [i.slide for i in test]
    config = stage2.Stage2Config(
        steps=steps,
        batch_size=16,
        lr=5e-4,
        warmup_steps=steps // 10,
        temperature=0.1,
        proj_dim=64,
        molecular_dim=64,
        log_every=max(1, steps // 3),
    )

    def scores(network, table) -> list[float]:
        return [
            stage2.retrieval_top1(*stage2.aligned_vectors(network, slides, table))
            for slides in (train_slides, test_slides)
        ]

    # As pretrain_care_stage2: RNA from the Stage I model, then protein from the RNA phase's
    # checkpoint (its CareModel and slide projection) with a new protein encoder.
    rows, care, head, init = [], stage1_model, None, copy.deepcopy(stage1_model)
    for modality, table_all in (("RNA", rna_all), ("protein", protein_all)):
        table_train = subset(table_all, train_ids)
        before = scores(_phase_start(care, table_train, config, head), table_all)
        began = time.perf_counter()
        phase = stage2.train_care_stage2(
            train_slides, table_train, cache_root() / "stage2", config, init=init
        )
        result = run_to_end(phase, lambda p: print(f"  {p.message}"))
        seconds = time.perf_counter() - began
        window = max(1, steps // 10)
        rows.append(
            [
                modality,
                f"{np.mean(result.losses[:window]):.2f} -> {np.mean(result.losses[-window:]):.2f}",
                *before,
                *scores(result.network, table_all),
                f"{seconds:.0f}",
            ]
        )
        care, head, init = result.model, result.network.slide_head.state_dict(), result.checkpoint
    table(
        "(d) Stage II (profiles = f(tissue mix); RNA phase, then protein phase from its model; "
        f"{steps} steps of 16 slides each): slide -> profile retrieval top-1; "
        f"chance {1 / len(train):.3f} on {len(train)} training, "
        f"{1 / len(test):.3f} on {len(test)} held-out slides",
        ["phase", "InfoNCE", "train before", "held-out before", "train after", "held-out after", "seconds"],
        rows,
    )
