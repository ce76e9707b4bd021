"""The salient 20x tile of a region, for the mixing encoder's ``cls+tile`` readout.

A cue in a few 20x tiles of a region is diluted in any one-vector summary of its 21 tokens
(the compressed CLS). The ``cls+tile`` readout keeps, next to the CLS, the region's most
salient 20x tile, chosen without labels as the present 20x tile of largest norm after
whitening: tiles are standardised with the statistics of all pretraining tokens (5x, 10x and
20x) and whitened with ``MixMagEncoder.tile_whitening`` (the ZCA of the pretraining regions'
20x tiles, covariance about their own mean), so that a cue in low-variance directions counts.
The norm is taken about the all-token mean, not re-centred on the 20x tiles' mean (that
variant was not measured). The tile is given whitened. (This project's option; the paper is
silent.)
"""

from __future__ import annotations

import torch


def salient_tile(tiles: torch.Tensor, present: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """Whitened embedding of each region's present 20x tile of largest whitened norm, ``[B, D]``.

    Parameters
    ----------
    tiles
        ``[B, 16, D]`` standardised 20x tile embeddings of B regions, zeros where missing.
    present
        ``[B, 16]`` bool; a region without any present tile gets its first (zero) slot.
    whitening
        ``[D, D]`` whitening matrix applied to the standardised tiles.
    """
    whitened = tiles @ whitening
    score = whitened.pow(2).sum(dim=-1).masked_fill(~present, -1.0)
    return whitened[torch.arange(len(whitened), device=whitened.device), score.argmax(dim=1)]
