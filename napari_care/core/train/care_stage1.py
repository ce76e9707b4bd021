"""CARE Stage I: iBOT-style self-supervised pretraining on patch features (no labels).

A student and an EMA teacher, both :class:`~napari_care.core.models.care.CareModel` with
small projection heads, read **two views** of each sub-slide (:mod:`.feature_views`:
sub-slides of at most ``max_patches`` patches, compact random crops, feature
augmentation). Per step, for a batch of sub-slides:

``L = L_slide + mim_weight * L_mim + lambda_rsl * L_rsl``

* ``L_slide`` (DINO, cross-view): the student's slide embedding of one view, through
  the slide head, predicts the teacher's distribution for the *other* view:
  ``CE(softmax((t - c) / tau_t), softmax(s / tau_s))`` with a centre ``c`` (EMA of the
  teacher's outputs) and a sharp teacher temperature, the two devices that keep DINO
  from collapsing.
* ``L_mim`` (iBOT, masked patch-feature prediction): a share of each view's patches is
  replaced by a learned mask token ``[D]`` in the student's input. Target: the teacher's
  patch token ``teacher.embed(x_j)`` of the clean view through its patch head, centred
  and sharpened. Prediction: the **ARSA feature of the adaptive region the patch joined**
  (CARE's most local contextual output), so the loss also rewards homogeneous regions;
  its gradient reaches the generator through the straight-through gate.
* ``L_rsl``: the student's region structuring loss (``CareConfig.lambda_rsl``).
* ``L_cons`` (``consistency_weight``, 0 by default; this project's addition): the expected
  cross-entropy ``sum_c p[j, c] CE(teacher_j, region(c))`` of every real patch's teacher
  token under the soft assignment over its *candidate* regions. Its gradient reaches
  ``p`` directly: each patch is pulled to the candidate region that describes it best.

The teacher follows the student by EMA (momentum ``teacher_momentum`` rising to 1 on a
cosine). The model saved and returned is the **teacher's CareModel** (as in DINO/iBOT);
the checkpoint's extra state holds what resuming needs. Mask ratios, views, augmentations,
heads and temperatures are this project's choices (the paper does not give them).

Reproducibility: the randomness of step ``t`` comes from a generator seeded with
``(seed, t)``, so a run resumed from a checkpoint ends exactly as the uninterrupted run.
"""

from __future__ import annotations

import copy
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
from napari_care.core.progress import Progress, ProgressGen
from napari_care.core.train.care_stage1_config import Stage1Config
from napari_care.core.train.feature_views import (
    SlideFeatures,
    augment_features,
    check_same_dim,
    random_crop,
    subslide_pool,
)
from napari_care.core.train.schedule import cosine_schedule, step_seed


@dataclass
class Stage1Result:
    """Outcome of :func:`train_care_stage1`: the teacher's CareModel (eval mode), its config, the
    total loss of every step and its parts (resumed runs include earlier ones), the final checkpoint."""

    model: CareModel
    config: CareConfig
    losses: list[float]
    components: dict[str, list[float]]
    checkpoint: Path


class ProjectionHead(nn.Module):
    """DINO-style head: MLP to a bottleneck, L2 normalisation, linear map to prototypes."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Linear(bottleneck, prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., E]`` -> ``[..., prototypes]`` logits."""
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class Stage1Network(nn.Module):
    """A CareModel with Stage I heads and the mask token (one for the student, one for the teacher)."""

    def __init__(self, care_config: CareConfig, config: Stage1Config) -> None:
        super().__init__()
        self.care = CareModel(care_config)
        sizes = (care_config.embed_dim, config.head_hidden, config.head_bottleneck, config.prototypes)
        self.slide_head = ProjectionHead(*sizes)
        self.patch_head = ProjectionHead(*sizes)
        self.mask_token = nn.Parameter(torch.zeros(care_config.in_dim))


def _teacher_target(teacher_logits: torch.Tensor, center: torch.Tensor, config: Stage1Config) -> torch.Tensor:
    """Centred, sharpened teacher distributions ``[M, prototypes]``."""
    return torch.softmax((teacher_logits - center) / config.teacher_temperature, dim=-1)


def _soft_cross_entropy(
    teacher_logits: torch.Tensor, center: torch.Tensor, student_logits: torch.Tensor, config: Stage1Config
) -> torch.Tensor:
    """``[M]`` cross-entropy of centred, sharpened teacher targets against student outputs."""
    target = _teacher_target(teacher_logits, center, config)
    return -(target * torch.log_softmax(student_logits / config.student_temperature, dim=-1)).sum(-1)


def _mean_per_view(per_patch: torch.Tensor, rows: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Mean over each view's patches (view of each value: ``rows``; patches per view), then over views:
    a large view does not outweigh a small one."""
    per_view = per_patch.new_zeros(len(patches)).index_add(0, rows, per_patch)
    return (per_view / patches.clamp_min(1)).mean()


@dataclass
class _Views:
    """Two views of each sub-slide of a step, as the 2B padded slides the models read."""

    features: torch.Tensor  # [2B, N, D] clean (augmented) view features
    grid: torch.Tensor  # [2B, N, 2]
    valid: torch.Tensor  # [2B, N] real patches
    masked: torch.Tensor  # [2B, N] patches masked in the student's input


def _draw_views(
    slides: Sequence[SlideFeatures],
    pool: list,
    config: Stage1Config,
    rng: np.random.Generator,
    device: torch.device,
) -> _Views:
    picks = rng.integers(len(pool), size=config.batch_size)
    views, masks = [], []
    for _view in range(2):  # view-major order: slide i's views sit at i and B + i
        for pick in picks:
            slide_index, patches = pool[pick]
            slide = slides[slide_index]
            size = round(rng.uniform(*config.crop_fraction) * len(patches))
            chosen = patches[random_crop(slide.grid[patches], size, rng)]
            features = augment_features(slide.features[chosen], config.augmentation, rng)
            views.append((torch.from_numpy(features), slide.grid[chosen]))
            n_masked = int(
                np.clip(round(rng.uniform(*config.mask_ratio) * len(chosen)), 1, max(1, len(chosen) - 1))
            )
            mask = np.zeros(len(chosen), dtype=bool)
            mask[rng.choice(len(chosen), n_masked, replace=False)] = True
            masks.append(torch.from_numpy(mask))
    features, grid, valid = pad_slides(views)
    masked = torch.nn.utils.rnn.pad_sequence(masks, batch_first=True)
    return _Views(
        features.to(device), grid.to(device), valid.to(device), masked.to(device) & valid.to(device)
    )


def stage1_losses(
    student: Stage1Network,
    teacher: Stage1Network,
    views: _Views,
    centers: dict[str, torch.Tensor],
    config: Stage1Config,
) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """Total loss, its parts, and the teacher outputs the centres are updated with."""
    student_input = torch.where(views.masked[..., None], student.mask_token, views.features)
    out = student.care.forward_batch(student_input, views.grid, views.valid)
    with torch.no_grad():
        teacher_out = teacher.care.forward_batch(views.features, views.grid, views.valid)
        teacher_slide = teacher.slide_head(teacher_out.slide_embedding)
        # Patch tokens of the masked patches (L_mim), or of every real patch when L_cons needs them too.
        tokens_of = views.valid if config.consistency_weight > 0 else views.masked
        teacher_tokens = teacher.patch_head(teacher.care.embed(views.features[tokens_of]))
        teacher_patch = teacher_tokens[views.masked[tokens_of]]
    batch = config.batch_size
    other_view = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(teacher_slide.device)
    slide_loss = _soft_cross_entropy(
        teacher_slide[other_view], centers["slide"], student.slide_head(out.slide_embedding), config
    ).mean()
    rows, cols = views.masked.nonzero(as_tuple=True)
    region_token = out.region_features[rows, out.region_of_patch[rows, cols]]
    per_patch = _soft_cross_entropy(teacher_patch, centers["patch"], student.patch_head(region_token), config)
    mim_loss = _mean_per_view(per_patch, rows, views.masked.sum(1))
    rsl = out.rsl.mean()
    total = slide_loss + config.mim_weight * mim_loss + student.care.config.lambda_rsl * rsl
    parts = {"slide": float(slide_loss.detach()), "mim": float(mim_loss.detach()), "rsl": float(rsl.detach())}
    if config.consistency_weight > 0:
        consistency = _consistency_loss(
            student, views, out, _teacher_target(teacher_tokens, centers["patch"], config), config
        )
        total = total + config.consistency_weight * consistency
        parts["consistency"] = float(consistency.detach())
    return total, parts, {"slide": teacher_slide, "patch": teacher_patch}


def _consistency_loss(
    student: Stage1Network, views: _Views, out, target: torch.Tensor, config: Stage1Config
) -> torch.Tensor:
    """``L_cons``: expected cross-entropy of each real patch's teacher ``target``
    (``[real patches, prototypes]``, row-major over ``views.valid``) under ``p`` over its candidate
    regions."""
    rows, cols = views.valid.nonzero(as_tuple=True)
    # Log-probabilities once per region, then gathered per (patch, candidate); -1: no region.
    region_log_prob = torch.log_softmax(
        student.patch_head(out.region_features) / config.student_temperature, dim=-1
    )
    candidate_region = out.candidate_region[rows, cols]
    weight = out.assignment[rows, cols] * (candidate_region >= 0)
    cross_entropy = -(target[:, None, :] * region_log_prob[rows[:, None], candidate_region.clamp_min(0)]).sum(
        -1
    )
    per_patch = (weight * cross_entropy).sum(1) / weight.sum(1).clamp_min(1e-12)
    return _mean_per_view(per_patch, rows, views.valid.sum(1))


@torch.no_grad()
def _update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    for student_param, teacher_param in zip(student.parameters(), teacher.parameters(), strict=True):
        teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)


def _with_gain_group(saved: dict, optimizer) -> dict:
    """A saved optimizer state with the (empty) gain group runs from before it existed can lack."""
    groups = saved["param_groups"]
    if len(groups) != 1 or len(optimizer.param_groups) != 2 or optimizer.param_groups[1]["params"]:
        return saved
    weights, gains = optimizer.state_dict()["param_groups"]
    return {**saved, "param_groups": [{**weights, **groups[0], "lr_factor": 1.0}, gains]}


def _training_state(step, student, teacher, centers, optimizer, config, losses, components) -> dict:
    return {
        "kind": "care_stage1",
        "step": step,
        "train_config": config.to_dict(),
        "losses": losses,
        "components": components,
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "centers": dict(centers),
        "optimizer": optimizer.state_dict(),
    }


def _networks(care_config: CareConfig, config: Stage1Config, device: torch.device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initial weights belong to the run's seed
        student = Stage1Network(care_config, config)
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return student.to(device), teacher.to(device)


def train_care_stage1(
    slides: Sequence[SlideFeatures],
    model_config: CareConfig | None,
    out_dir: str | Path,
    config: Stage1Config = Stage1Config(),
    *,
    resume_from: str | Path | None = None,
    encoder: str = "default",
) -> ProgressGen[Stage1Result]:
    """Stage I pretraining of CARE; a generator of :class:`Progress` returning :class:`Stage1Result`.

    Parameters
    ----------
    slides
        Patch features of the training slides (one encoder, so one D); no labels.
    model_config
        Options of a new model; None (or the same config) when resuming.
    out_dir
        Folder of the checkpoints ``care_stage1_step<step>.*`` and ``care_stage1_final.*``.
    config
        Training options (a resumed run must use the same ones).
    resume_from
        A checkpoint written by this function; training continues from its step.
    encoder
        Name of the patch encoder of the features (for error messages).

    Raises
    ------
    FeatureDimMismatch
        When the checkpoint or config expects another D than the features have.
    """
    out_dir = Path(out_dir)
    feature_dim = check_same_dim(slides)
    pool = subslide_pool(slides, config.max_patches, config.min_patches)
    device = torch.device(config.device)
    start, losses, components, state = 0, [], {"slide": [], "mim": [], "rsl": []}, None
    if resume_from is not None:
        _, saved_config, state = load_checkpoint(resume_from, CareModel)
        check_feature_dim(saved_config, feature_dim, checkpoint=resume_from, encoder=encoder)
        if model_config is not None and model_config != saved_config:
            raise ValueError(
                f"checkpoint {resume_from} was trained with {saved_config}, not {model_config}; "
                "pass model_config=None to resume"
            )
        if state.get("kind") != "care_stage1" or "optimizer" not in state:
            raise ValueError(f"checkpoint {resume_from} holds no CARE Stage I training state to resume from")
        model_config = saved_config
        start, losses, components = int(state["step"]), list(state["losses"]), dict(state["components"])
    elif model_config is None:
        raise ValueError("train_care_stage1: give model_config for a new run, or resume_from")
    else:
        check_feature_dim(model_config, feature_dim, checkpoint="(new model config)", encoder=encoder)
    student, teacher = _networks(model_config, config, device)
    centers = {
        "slide": torch.zeros(config.prototypes, device=device),
        "patch": torch.zeros(config.prototypes, device=device),
    }
    scales = {"care.affinity_scale", "care.log_prior_scale"}  # the generator's scalar weights (no decay)
    weights, gains = (
        [p for name, p in student.named_parameters() if (name in scales) == gain] for gain in (0, 1)
    )
    optimizer = torch.optim.AdamW(
        [
            {"params": weights, "lr_factor": 1.0},
            {"params": gains, "lr_factor": config.scale_lr_factor, "weight_decay": 0.0},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        centers = {name: value.to(device) for name, value in state["centers"].items()}
        optimizer.load_state_dict(_with_gain_group(state["optimizer"], optimizer))
    student.train()
    teacher.eval()
    devices = [device] if device.type != "cpu" else []
    for step in range(start, config.steps):
        seed = step_seed(config.seed, step)
        views = _draw_views(slides, pool, config, np.random.default_rng(seed), device)
        for group in optimizer.param_groups:
            group["lr"] = group["lr_factor"] * cosine_schedule(
                step, config.steps, config.warmup_steps, config.lr
            )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the student's augmented patch view draws from the global generator
            loss, parts, teacher_outputs = stage1_losses(student, teacher, views, centers, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        momentum = 1.0 - (1.0 - config.teacher_momentum) * 0.5 * (
            1.0 + math.cos(math.pi * step / config.steps)
        )
        _update_teacher(student, teacher, momentum)
        for name, output in teacher_outputs.items():
            momentum_c = config.center_momentum if step else 0.0  # the first batch sets the centres
            centers[name] = momentum_c * centers[name] + (1 - momentum_c) * output.mean(0)
        losses.append(float(loss.detach()))
        for name, value in parts.items():
            components.setdefault(name, []).append(value)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            yield Progress(
                "care-stage1",
                done,
                config.steps,
                f"step {done}/{config.steps}: loss {losses[-1]:.4f} (slide {parts['slide']:.3f}, "
                f"mim {parts['mim']:.3f}, rsl {parts['rsl']:.4f})",
            )
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            path = save_checkpoint(
                out_dir / f"care_stage1_step{done:06d}",
                teacher.care,
                model_config,
                extra_state=_training_state(
                    done, student, teacher, centers, optimizer, config, losses, components
                ),
            )
            yield Progress("care-stage1", done, config.steps, f"saved {path.name}")
    final = save_checkpoint(
        out_dir / "care_stage1_final",
        teacher.care,
        model_config,
        extra_state=_training_state(
            config.steps, student, teacher, centers, optimizer, config, losses, components
        ),
    )
    yield Progress("care-stage1", config.steps, config.steps, f"saved {final.name}")
    model = teacher.care.eval()
    model.requires_grad_(True)  # frozen only as a teacher; the caller may fine-tune it
    return Stage1Result(model, model_config, losses, components, final)
