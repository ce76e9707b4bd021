"""CARE Stage II: CLIP-style alignment of slide embeddings with molecular profiles.

For a batch of slides with a row in a molecular table (keyed by slide id), the CARE slide
embedding goes through a linear projection, the profile through a molecular encoder
(:mod:`napari_care.core.molecular`: a small transformer for RNA, an embedding table for
proteins); both are L2-normalised and

``L = (CE(logits, i) + CE(logits^T, i)) / 2 + lambda_rsl * L_rsl``,
``logits = exp(s) * z_slide @ z_mol^T``

(symmetric InfoNCE, CLIP's learned logit scale ``s``, capped at ``log 100``). The whole
CareModel trains: the loss reaches the region generator through the straight-through gate
and the RSL. The paper's schedule is RNA first, then protein (:func:`pretrain_care_stage2`);
each phase is resumable from its checkpoints (``care_stage2_<modality>_step*`` /
``care_stage2_<modality>_final``), whose model is the CareModel and whose extra state holds
the projection, the molecular encoder (with its config) and the AdamW state.

This project's choices: a slide larger than ``max_patches`` patches is read as a random
compact crop each step (bounded memory; evaluation reads whole slides), the feature
augmentation of :mod:`.feature_views`, one learning rate for all parts.
Randomness of step ``t`` is seeded by ``(seed, t)``: a resumed run ends as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_care.core.checkpoint import check_feature_dim, load_checkpoint, save_checkpoint
from napari_care.core.models.care import CareConfig, CareModel, pad_slides
from napari_care.core.molecular import (
    MolecularTable,
    ProteinEncoder,
    ProteinEncoderConfig,
    ProteinTable,
    RNAEncoder,
    RNAEncoderConfig,
    RNATable,
    molecular_encoder,
    molecular_inputs,
)
from napari_care.core.progress import Progress, ProgressGen
from napari_care.core.train.care_stage2_config import Stage2Config
from napari_care.core.train.feature_views import (
    SlideFeatures,
    augment_features,
    check_same_dim,
    random_crop,
)
from napari_care.core.train.schedule import cosine_schedule, step_seed

MODALITIES = {"rna": (RNAEncoder, RNAEncoderConfig), "protein": (ProteinEncoder, ProteinEncoderConfig)}
_MAX_LOGIT_SCALE = math.log(100.0)


class Stage2Network(nn.Module):
    """CareModel + slide projection + molecular encoder + logit scale."""

    def __init__(self, care: CareModel, molecular: nn.Module, config: Stage2Config) -> None:
        super().__init__()
        self.care = care
        self.slide_head = nn.Linear(care.config.embed_dim, config.proj_dim)
        self.molecular = molecular
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.temperature)), requires_grad=config.learn_temperature
        )

    def slide_vectors(self, slide_embedding: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` CARE slide embeddings -> ``[B, proj_dim]`` unit vectors."""
        return F.normalize(self.slide_head(slide_embedding), dim=-1)

    def molecule_vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """Molecular encoder inputs -> ``[B, proj_dim]`` unit vectors."""
        return F.normalize(self.molecular(inputs), dim=-1)


@dataclass
class Stage2Result:
    """Outcome of one phase: the network (eval mode; ``network.care`` is the CareModel),
    the modality, the loss of every step and the final checkpoint's JSON path."""

    network: Stage2Network
    modality: str
    losses: list[float]
    checkpoint: Path

    @property
    def model(self) -> CareModel:
        """The aligned CareModel."""
        return self.network.care


def matched_slides(slides: Sequence[SlideFeatures], table: MolecularTable) -> list[SlideFeatures]:
    """The slides that have a row in the table (at least two, or a clear error)."""
    known = set(table.slide_ids)
    matched = [slide for slide in slides if slide.slide_id in known]
    if len(matched) < 2:
        examples = [slide.slide_id for slide in slides[:3]]
        raise ValueError(
            f"only {len(matched)} of {len(slides)} slides have a molecular profile "
            f"(slide ids such as {examples} vs table ids such as {list(table.slide_ids[:3])})"
        )
    return matched


def modality_of(table: MolecularTable) -> str:
    """``"rna"`` or ``"protein"``."""
    return "rna" if isinstance(table, RNATable) else "protein"


def _initial_care(init, model_config: CareConfig | None, feature_dim: int, encoder: str, seed: int):
    """CareModel (and a projection state, from a Stage II checkpoint) to start a phase from."""
    if isinstance(init, CareModel):
        check_feature_dim(init.config, feature_dim, checkpoint="(given model)", encoder=encoder)
        return init, None
    if init is not None:
        care, care_config, extra = load_checkpoint(init, CareModel)
        check_feature_dim(care_config, feature_dim, checkpoint=init, encoder=encoder)
        network_state = extra.get("network") if extra.get("kind") == "care_stage2" else None
        head = {
            key.removeprefix("slide_head."): value
            for key, value in (network_state or {}).items()
            if key.startswith("slide_head.")
        }
        return care, head or None
    if model_config is None:
        raise ValueError("Stage II needs init (a CareModel or checkpoint), model_config, or resume_from")
    check_feature_dim(model_config, feature_dim, checkpoint="(new model config)", encoder=encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CareModel(model_config), None


def _batch(
    slides: Sequence[SlideFeatures], picks: np.ndarray, config: Stage2Config, rng: np.random.Generator
):
    views = []
    for pick in picks:
        slide = slides[pick]
        chosen = random_crop(slide.grid, config.max_patches, rng)
        views.append(
            (
                torch.from_numpy(augment_features(slide.features[chosen], config.augmentation, rng)),
                slide.grid[chosen],
            )
        )
    return pad_slides(views)


def _state(step, modality, network, optimizer, config, losses) -> dict:
    molecular_config = network.molecular.config
    return {
        "kind": "care_stage2",
        "modality": modality,
        "step": step,
        "train_config": dataclasses.asdict(config),
        "losses": losses,
        "molecular_config": dataclasses.asdict(molecular_config),
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
    }


def train_care_stage2(
    slides: Sequence[SlideFeatures],
    table: MolecularTable,
    out_dir: str | Path,
    config: Stage2Config = Stage2Config(),
    *,
    init: CareModel | str | Path | None = None,
    model_config: CareConfig | None = None,
    resume_from: str | Path | None = None,
    encoder: str = "default",
) -> ProgressGen[Stage2Result]:
    """One Stage II phase; a generator of :class:`Progress` returning :class:`Stage2Result`.

    Parameters
    ----------
    slides
        Patch features; slides without a row in ``table`` are left out.
    table
        An :class:`~napari_care.core.molecular.RNATable` or
        :class:`~napari_care.core.molecular.ProteinTable`; its type is the phase's modality.
    out_dir
        Folder of the checkpoints ``care_stage2_<modality>_*``.
    config
        Training options.
    init
        Start from this CareModel or checkpoint (Stage I, or a Stage II checkpoint whose
        slide projection is reused too); None builds a new model from ``model_config``.
    model_config
        Options of a new model (without ``init``).
    resume_from
        A checkpoint of this phase; training continues from its step.
    encoder
        Name of the patch encoder of the features (for error messages).

    Raises
    ------
    FeatureDimMismatch
        When the model expects another D than the features have.
    """
    out_dir = Path(out_dir)
    modality = modality_of(table)
    slides = matched_slides(slides, table)
    feature_dim = check_same_dim(slides)
    device = torch.device(config.device)
    start, losses, state = 0, [], None
    if resume_from is not None:
        care, care_config, state = load_checkpoint(resume_from, CareModel)
        check_feature_dim(care_config, feature_dim, checkpoint=resume_from, encoder=encoder)
        if (
            state.get("kind") != "care_stage2"
            or state.get("modality") != modality
            or "optimizer" not in state
        ):
            raise ValueError(
                f"checkpoint {resume_from} holds no Stage II {modality} training state to resume from"
            )
        molecular_cls, molecular_config_cls = MODALITIES[modality]
        molecular = molecular_cls(molecular_config_cls(**state["molecular_config"]))
        head = None
        start, losses = int(state["step"]), list(state["losses"])
    else:
        care, head = _initial_care(init, model_config, feature_dim, encoder, config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            molecular = molecular_encoder(table, out_dim=config.proj_dim, dim=config.molecular_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        network = Stage2Network(care, molecular, config)
    if head is not None:
        network.slide_head.load_state_dict(head)
    network.to(device).train()
    network.care.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
    slide_ids = [slide.slide_id for slide in slides]
    batch_size = min(config.batch_size, len(slides))
    devices = [device] if device.type != "cpu" else []
    stage = f"care-stage2-{modality}"
    for step in range(start, config.steps):
        seed = step_seed(config.seed, step)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(slides), batch_size, replace=False))
        features, grid, valid = _batch(slides, picks, config, rng)
        inputs = molecular_inputs(table, [slide_ids[i] for i in picks]).to(device)
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(step, config.steps, config.warmup_steps, config.lr)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # dropout and the augmented patch view draw from the global generator
            loss = contrastive_loss(network, features.to(device), grid.to(device), valid.to(device), inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            network.logit_scale.clamp_(0.0, _MAX_LOGIT_SCALE)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            yield Progress(stage, done, config.steps, f"step {done}/{config.steps}: loss {losses[-1]:.4f}")
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            path = save_checkpoint(
                out_dir / f"care_stage2_{modality}_step{done:06d}",
                network.care,
                network.care.config,
                extra_state=_state(done, modality, network, optimizer, config, losses),
            )
            yield Progress(stage, done, config.steps, f"saved {path.name}")
    final = save_checkpoint(
        out_dir / f"care_stage2_{modality}_final",
        network.care,
        network.care.config,
        extra_state=_state(config.steps, modality, network, optimizer, config, losses),
    )
    yield Progress(stage, config.steps, config.steps, f"saved {final.name}")
    return Stage2Result(network.eval(), modality, losses, final)


def contrastive_loss(
    network: Stage2Network,
    features: torch.Tensor,
    grid: torch.Tensor,
    valid: torch.Tensor,
    molecular_inputs: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE of a padded slide batch against its molecular inputs, plus the weighted RSL."""
    out = network.care.forward_batch(features, grid, valid)
    logits = (
        network.logit_scale.exp()
        * network.slide_vectors(out.slide_embedding)
        @ network.molecule_vectors(molecular_inputs).T
    )
    target = torch.arange(len(logits), device=logits.device)
    info_nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return info_nce + network.care.config.lambda_rsl * out.rsl.mean()


def pretrain_care_stage2(
    slides: Sequence[SlideFeatures],
    rna: RNATable | None,
    protein: ProteinTable | None,
    out_dir: str | Path,
    config: Stage2Config = Stage2Config(),
    *,
    init: CareModel | str | Path | None = None,
    model_config: CareConfig | None = None,
    resume_from: str | Path | None = None,
    encoder: str = "default",
) -> ProgressGen[list[Stage2Result]]:
    """The paper's schedule: an RNA phase, then a protein phase started from its result.

    Either table may be None (that phase is skipped). ``resume_from`` may be a checkpoint
    of either phase: an RNA one resumes the RNA phase (the protein phase follows), a protein
    one resumes the protein phase. Returns the results of the phases run, in order.
    """
    phases = [table for table in (rna, protein) if table is not None]
    if not phases:
        raise ValueError("Stage II needs an RNA table, a protein table, or both")
    resume_modality = None
    if resume_from is not None:
        _, _, extra = load_checkpoint(resume_from, CareModel)
        resume_modality = extra.get("modality")
        if resume_modality not in [modality_of(table) for table in phases]:
            raise ValueError(f"checkpoint {resume_from} is not a Stage II checkpoint of the phases asked for")
    results: list[Stage2Result] = []
    for table in phases:
        modality = modality_of(table)
        if resume_modality == "protein" and modality == "rna":
            continue
        resume = resume_from if modality == resume_modality else None
        start = results[-1].checkpoint if results else init
        result = yield from train_care_stage2(
            slides,
            table,
            out_dir,
            config,
            init=None if resume else start,
            model_config=model_config,
            resume_from=resume,
            encoder=encoder,
        )
        results.append(result)
    return results


@torch.no_grad()
def aligned_vectors(
    network: Stage2Network, slides: Sequence[SlideFeatures], table: MolecularTable
) -> tuple[np.ndarray, np.ndarray]:
    """Unit slide and molecule vectors ``[S, proj_dim]`` of whole slides (eval mode), in slide order."""
    slides = matched_slides(slides, table)
    network.eval()
    device = network.care.device
    slide_vectors = torch.cat(
        [
            network.slide_vectors(
                network.care(torch.from_numpy(slide.features).to(device), slide.grid).slide_embedding[None]
            )
            for slide in slides
        ]
    )
    inputs = molecular_inputs(table, [slide.slide_id for slide in slides]).to(device)
    return slide_vectors.cpu().numpy(), network.molecule_vectors(inputs).cpu().numpy()


def retrieval_top1(slide_vectors: np.ndarray, molecule_vectors: np.ndarray) -> float:
    """Share of slides whose own molecular profile is the most similar one (chance: 1 / S)."""
    similarity = np.asarray(slide_vectors) @ np.asarray(molecule_vectors).T
    return float(np.mean(np.argmax(similarity, axis=1) == np.arange(len(similarity))))
