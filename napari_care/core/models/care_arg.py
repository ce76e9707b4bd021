"""CARE's adaptive region generator (ARG) and region structuring loss (RSL), in torch.

Each patch chooses among its candidate blocks (ranked 0, 1, 2 by containment) with the
score ``w = rho * C``: ``rho`` is the semantic affinity (mean of softmaxes over the
candidates of cosine similarities between patch views and block features) and ``C`` the
soft containment. The hard choice is ``argmax w``; the soft one, behind the gradient and
the expected rank, is ``p = softmax(log w / assignment_temperature)``.

Why ``log w``: the paper says "softmax of w", but ``w`` lies in [0, 1], where a plain
softmax is nearly uniform whatever the scores, so the expected rank would hardly move. With
temperature 1, ``softmax(log w)`` is ``w`` normalised over the candidates: it agrees with
the argmax and sharpens with it. This is this project's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from napari_care.core.models.care_config import HARD_ASSIGNMENTS

_TINY = 1e-30


def candidate_affinity(
    patch_views: Sequence[torch.Tensor],
    block_views: Sequence[torch.Tensor],
    candidates: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Semantic affinity ``rho[j, c]`` of every patch to each of its candidate blocks.

    Parameters
    ----------
    patch_views
        ``[M, E]`` views of the patches (CARE: the patch and its augmented view).
    block_views
        ``[B, E]`` block features (CARE: ``g_cls`` and ``g_q``).
    candidates
        ``[M, c]`` long candidate block ids (-1 for a missing slot).
    temperature
        Softmax temperature of the cosine similarities.

    Returns
    -------
    torch.Tensor
        ``[M, c]``: the mean over all (patch view, block view) pairs of
        ``softmax_c(cos(view_j, block_c) / temperature)``; 0 at missing slots.
    """
    valid = candidates >= 0
    safe = candidates.clamp(min=0)
    unit_patches = [F.normalize(view, dim=-1) for view in patch_views]
    softmaxes = []
    for block_view in block_views:
        unit_blocks = F.normalize(block_view, dim=-1)
        # One candidate slot at a time: memory [M, E], never [M, c, E].
        slots = [unit_blocks[safe[:, slot]] for slot in range(candidates.shape[1])]
        for unit_patch in unit_patches:
            cosine = torch.stack([(unit_patch * block).sum(-1) for block in slots], dim=1)
            softmaxes.append(torch.softmax((cosine / temperature).masked_fill(~valid, float("-inf")), dim=1))
    return torch.stack(softmaxes).mean(0)


def soft_assignment(
    rho: torch.Tensor, containment: torch.Tensor, candidates: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log w`` (``-inf`` at missing slots) and ``p = softmax(log w / temperature)``, both ``[M, c]``."""
    log_w = rho.clamp_min(_TINY).log() + containment.clamp_min(_TINY).log()
    log_w = log_w.masked_fill(candidates < 0, float("-inf"))
    return log_w, torch.softmax(log_w / temperature, dim=1)


def hard_assignment(
    log_w: torch.Tensor,
    p: torch.Tensor,
    mode: str = "straight-through",
    *,
    training: bool = False,
    gumbel_tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate each patch joins, and a gate that carries the gradient of that choice.

    Parameters
    ----------
    log_w, p
        From :func:`soft_assignment`.
    mode
        ``"straight-through"``: join ``argmax w``; the gate is ``1 + p_c - stopgrad(p_c)``
        (1 in the forward pass, the gradient of ``p`` in the backward pass).
        ``"gumbel"``: while training, sample with a hard Gumbel-softmax over ``log p``
        (straight-through as well); in eval mode it joins ``argmax w``.
    training
        Whether the module is training.
    gumbel_tau
        Temperature of the Gumbel-softmax.

    Returns
    -------
    (choice, gate)
        ``[M]`` long candidate slot, ``[M]`` float gate (1 in value). Multiplying a patch's
        token (and its coverage count) by the gate lets the loss reach the generator.
    """
    if mode not in HARD_ASSIGNMENTS:
        raise ValueError(f"hard assignment mode must be one of {HARD_ASSIGNMENTS}, got {mode!r}")
    if mode == "gumbel" and training:
        sample = F.gumbel_softmax(
            p.clamp_min(_TINY).log().masked_fill(p == 0, float("-inf")), tau=gumbel_tau, hard=True
        )
        choice = sample.argmax(dim=1)
        return choice, sample.gather(1, choice[:, None])[:, 0]
    choice = log_w.argmax(dim=1)
    chosen = p.gather(1, choice[:, None])[:, 0]
    return choice, 1.0 + chosen - chosen.detach()


def region_structuring_loss(
    p: torch.Tensor, slide_of_patch: torch.Tensor, n_slides: int, e_star: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected candidate rank per slide and the region structuring loss.

    ``E_bar`` = mean over a slide's patches of ``sum_c p[j, c] * c`` (rank 0 = nearest
    block); ``L_rsl = (E_bar - E_star)^2``. A low ``E_star`` pulls patches to their nearest
    block (the fixed grid), a higher one lets them follow semantics further.

    Returns
    -------
    (expected_rank, rsl)
        Both ``[n_slides]``.
    """
    ranks = torch.arange(p.shape[1], dtype=p.dtype, device=p.device)
    per_patch = (p * ranks).sum(dim=1)
    total = p.new_zeros(n_slides).index_add(0, slide_of_patch, per_patch)
    count = torch.bincount(slide_of_patch, minlength=n_slides).to(p.dtype)
    expected_rank = total / count.clamp_min(1.0)
    return expected_rank, (expected_rank - e_star) ** 2
