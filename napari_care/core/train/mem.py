"""Pretraining of the mixed-magnification region encoder (MEM / CMEM).

The data are the region tokens of many slides (:class:`~napari_care.core.models.mixmag.RegionTokens`,
``[R, 21, D]`` plus a presence mask). Each step draws a batch of regions from the pool
(with replacement), masks some of their tokens and minimises the model's pretraining loss
with AdamW under a linear-warmup cosine schedule.

:func:`region_bags` then turns each slide's region tokens into an AB-MIL bag.

Reproducibility and resuming: the randomness of step ``t`` (batch, masks, noise, dropout)
comes from a generator seeded with ``(seed, t)``, so a run resumed from a checkpoint
(weights, AdamW state, step) continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from napari_care.core.checkpoint import check_feature_dim, load_checkpoint, save_checkpoint
from napari_care.core.models.mixmag import (
    FIRST_20X_TOKEN,
    N_TOKENS,
    MixMagConfig,
    MixMagEncoder,
    RegionTokens,
)
from napari_care.core.progress import Progress, ProgressGen
from napari_care.core.train.mem_config import MEMTrainConfig
from napari_care.core.train.schedule import cosine_schedule, step_seed


@dataclass
class MEMTrainResult:
    """Outcome of :func:`train_mem`: the model (eval mode), its config, the loss of every
    step (resumed runs include the earlier steps) and the final checkpoint's JSON path."""

    model: MixMagEncoder
    config: MixMagConfig
    losses: list[float]
    checkpoint: Path


class _RegionPool:
    """All usable regions of all slides, addressed by one flat index (no concatenated copy)."""

    def __init__(self, slides: Sequence[RegionTokens], regions_per_slide: int | None, seed: int) -> None:
        if not slides:
            raise ValueError("train_mem needs at least one slide of region tokens")
        rng = np.random.default_rng(seed)
        self.slides, self.rows = [], []
        for index, slide in enumerate(slides):
            name = slide.slide_id or f"slides[{index}]"
            if slide.tokens.ndim != 3 or slide.tokens.shape[1] != N_TOKENS:
                raise ValueError(
                    f"{name}: region tokens must be [R, {N_TOKENS}, D], got {slide.tokens.shape}"
                )
            if slide.token_present.shape != slide.tokens.shape[:2]:
                raise ValueError(
                    f"{name}: token_present {slide.token_present.shape} does not match "
                    f"tokens {slide.tokens.shape[:2]}"
                )
            rows = np.flatnonzero(slide.token_present.any(axis=1))
            if regions_per_slide is not None and len(rows) > regions_per_slide:
                rows = np.sort(rng.choice(rows, regions_per_slide, replace=False))
            if len(rows):
                self.slides.append(slide)
                self.rows.append(rows)
        dims = {slide.tokens.shape[2] for slide in self.slides}
        if len(dims) > 1:
            raise ValueError(f"train_mem: slides have different feature dimensions {sorted(dims)}")
        if not dims:
            raise ValueError("train_mem: no slide has a region with any token present")
        self.feature_dim = dims.pop()
        self.offsets = np.cumsum([0] + [len(rows) for rows in self.rows])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def token_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of the present tokens of the pool's regions (one pass, float64)."""
        count, total, total_sq = 0, np.zeros(self.feature_dim), np.zeros(self.feature_dim)
        for slide, rows in zip(self.slides, self.rows, strict=True):
            present = slide.tokens[rows][slide.token_present[rows]].astype(np.float64)
            count, total, total_sq = (
                count + len(present),
                total + present.sum(0),
                total_sq + (present**2).sum(0),
            )
        mean = total / count
        return torch.from_numpy(mean), torch.from_numpy(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)))

    def tile_whitening(self, mean: torch.Tensor, std: torch.Tensor, shrinkage: float = 1e-3) -> torch.Tensor:
        """ZCA whitening ``[D, D]`` of the pool's present 20x tiles, standardised with ``mean``/``std``.

        Eigenvalues of their covariance are raised by ``shrinkage`` times the largest, so that
        directions without variance are not blown up. Identity with fewer than two tiles.
        """
        mean_np, std_np = mean.double().numpy(), std.double().numpy()
        count, total = 0, np.zeros(self.feature_dim)
        second_moment = np.zeros((self.feature_dim, self.feature_dim))
        for slide, rows in zip(self.slides, self.rows, strict=True):
            tiles = slide.tokens[rows, FIRST_20X_TOKEN:][slide.token_present[rows, FIRST_20X_TOKEN:]]
            tiles = (tiles.astype(np.float64) - mean_np) / std_np
            count, total, second_moment = (
                count + len(tiles),
                total + tiles.sum(0),
                second_moment + tiles.T @ tiles,
            )
        if count < 2:
            return torch.eye(self.feature_dim)
        tile_mean = total / count
        eigenvalues, vectors = np.linalg.eigh(second_moment / count - np.outer(tile_mean, tile_mean))
        eigenvalues = np.maximum(eigenvalues, 0.0) + shrinkage * max(float(eigenvalues.max()), 1e-12)
        return torch.from_numpy((vectors / np.sqrt(eigenvalues)) @ vectors.T).float()

    def batch(self, flat_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        slide_of = np.searchsorted(self.offsets, flat_indices, side="right") - 1
        tokens = np.empty((len(flat_indices), N_TOKENS, self.feature_dim), dtype=np.float32)
        present = np.empty((len(flat_indices), N_TOKENS), dtype=bool)
        for slide_index in np.unique(slide_of):
            picked = slide_of == slide_index
            rows = self.rows[slide_index][flat_indices[picked] - self.offsets[slide_index]]
            tokens[picked] = self.slides[slide_index].tokens[rows]
            present[picked] = self.slides[slide_index].token_present[rows]
        return torch.from_numpy(tokens), torch.from_numpy(present)


def _training_state(
    step: int, optimizer: torch.optim.Optimizer, config: MEMTrainConfig, losses: list[float]
) -> dict:
    return {
        "kind": "mem_training",
        "step": step,
        "train_config": dataclasses.asdict(config),
        "losses": losses,
        "optimizer": optimizer.state_dict(),
    }


def train_mem(
    slides: Sequence[RegionTokens],
    model_config: MixMagConfig | None,
    out_dir: str | Path,
    config: MEMTrainConfig = MEMTrainConfig(),
    *,
    resume_from: str | Path | None = None,
    encoder: str = "default",
) -> ProgressGen[MEMTrainResult]:
    """Pretrain a :class:`MixMagEncoder`; a generator of :class:`Progress` returning the result.

    Parameters
    ----------
    slides
        Region tokens of the training slides (all from one encoder, so one D).
    model_config
        Options of a new model; None (or the same config) when resuming.
    out_dir
        Folder of the checkpoints ``mem_step<step>.*`` and ``mem_final.*``.
    config
        Training options.
    resume_from
        A checkpoint written by this function; training continues from its step.
    encoder
        Name of the patch encoder of the tokens (for error messages).

    Raises
    ------
    FeatureDimMismatch
        When the checkpoint or config expects another D than the tokens have.
    """
    out_dir = Path(out_dir)
    pool = _RegionPool(slides, config.regions_per_slide, config.seed)
    device = torch.device(config.device)
    start_step, losses, optimizer_state = 0, [], None
    if resume_from is not None:
        loaded, saved_config, extra = load_checkpoint(resume_from, MixMagEncoder)
        if model_config is not None and model_config != saved_config:
            raise ValueError(
                f"checkpoint {resume_from} was trained with {saved_config}, not {model_config}; "
                "pass model_config=None to resume"
            )
        model, model_config = cast(MixMagEncoder, loaded), saved_config
        check_feature_dim(model_config, pool.feature_dim, checkpoint=resume_from, encoder=encoder)
        if extra.get("kind") != "mem_training" or "optimizer" not in extra:
            raise ValueError(f"checkpoint {resume_from} holds no MEM training state to resume from")
        start_step, losses, optimizer_state = int(extra["step"]), list(extra["losses"]), extra["optimizer"]
    elif model_config is None:
        raise ValueError("train_mem: give model_config for a new run, or resume_from")
    else:
        check_feature_dim(model_config, pool.feature_dim, checkpoint="(new model config)", encoder=encoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the initial weights belong to the run's seed too
            model = MixMagEncoder(model_config)
        if config.standardise_tokens:
            model.set_feature_stats(*pool.token_statistics())
            scaling = model.feature_mean, model.feature_std
            model.set_tile_whitening(pool.tile_whitening(*scaling))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    devices = [device] if device.type != "cpu" else []
    for step in range(start_step, config.steps):
        seed = step_seed(config.seed, step)
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randint(len(pool), (config.batch_size,), generator=generator).numpy()
        tokens, present = pool.batch(flat)
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(step, config.steps, config.warmup_steps, config.lr)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # dropout draws from the global generator
            loss, _ = model.pretraining_loss(tokens.to(device), present.to(device), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            yield Progress("mem", done, config.steps, f"step {done}/{config.steps}: loss {losses[-1]:.4f}")
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            path = save_checkpoint(
                out_dir / f"mem_step{done:06d}",
                model,
                model_config,
                extra_state=_training_state(done, optimizer, config, losses),
            )
            yield Progress("mem", done, config.steps, f"saved {path.name}")
    final = save_checkpoint(
        out_dir / "mem_final",
        model,
        model_config,
        extra_state=_training_state(config.steps, optimizer, config, losses),
    )
    yield Progress("mem", config.steps, config.steps, f"saved {final.name}")
    return MEMTrainResult(model.eval(), model_config, losses, final)


@torch.no_grad()
def region_bags(
    model: MixMagEncoder,
    slides: Sequence[RegionTokens],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    encoder: str = "default",
) -> dict[str, np.ndarray]:
    """AB-MIL bags from region tokens, for :func:`napari_care.core.train.mil.train_mil`.

    Parameters
    ----------
    model
        A (pretrained or randomly initialised) encoder; used in eval mode.
    slides
        Region tokens of each slide, with unique ``slide_id``.
    batch_size, device
        Inference batch (regions) and torch device.
    encoder
        Name of the patch encoder of the tokens (for error messages).

    Returns
    -------
    slide_id -> ``[instances, model.instance_dim]`` float32: one instance per region with the
    compressed readouts (``cls``, ``cls+tile``), one per present 20x tile with ``tokens``.
    """
    slide_ids = [slide.slide_id for slide in slides]
    if "" in slide_ids or len(set(slide_ids)) != len(slide_ids):
        raise ValueError("region_bags: every slide needs a unique, non-empty slide_id")
    model.eval().to(device)
    bags = {}
    for slide in slides:
        check_feature_dim(
            model.config, slide.tokens.shape[-1], checkpoint=type(model).__name__, encoder=encoder
        )
        tokens = torch.from_numpy(np.ascontiguousarray(slide.tokens, dtype=np.float32)).to(device)
        present = torch.from_numpy(np.asarray(slide.token_present, dtype=bool)).to(device)
        bags[slide.slide_id] = model.mil_instances(tokens, present, batch_size=batch_size).cpu().numpy()
    return bags
