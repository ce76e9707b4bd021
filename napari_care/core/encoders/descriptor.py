"""The built-in ``default`` encoder: a hand-made H&E tile descriptor in pure numpy.

It needs no weights and no torch, so the product works out of the box and the command
line starts fast. Each tile (224 px at 0.5 um/px by default; any square side works) is
block-averaged to 112 px (1 um/px) and 56 px (2 um/px), where nothing the statistics use
is lost, and described by:

* tissue: share of stained (non-glass), not-near-white and very dark pixels;
* stains: Ruifrok-Johnston colour deconvolution of optical density into haematoxylin (H),
  eosin (E) and DAB (D): mean, standard deviation and 10/50/90th percentiles of H, E, D
  and total OD, and their means over tissue only;
* colour: RGB means and spreads, HSV saturation and value, opponent (Lab-like) axes and a
  saturation-weighted hue;
* texture at several scales: gradient energy at 1, 2 and 4 um/px, local variance,
  structure-tensor coherence (fibre alignment), spatial autocorrelation (a co-occurrence
  measure) and an LBP-like neighbour-rank code, plus the spread of 8 um block means;
* nuclei: share, count (Euler number, no labelling) and mean size of haematoxylin-rich
  blobs at two thresholds, and their thickness (erosion survival).

Skewed values (shares, counts, gradient energies, variances) enter as logarithms. Raw
values are standardised with fixed robust constants (median and robust scale per
dimension from a fixed reference set, :mod:`.descriptor_constants`), never per batch, so
features from different slides and runs are comparable; then softly bounded to +-8
(``8 tanh(z / 8)``: linear within a few units, so only outliers are compressed).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import descriptor_ops as ops
from .config import EncoderCfg, check_finite, check_tiles
from .descriptor_constants import REFERENCE_MEDIAN, REFERENCE_SCALE
from .registry import register_encoder

WORK_PX = 112  # 1 um/px for 224-px tiles at 0.5 um/px
CHUNK_TILES = 32  # tiles per work unit: keeps the float working set in cache, feeds the threads
DESCRIPTOR_THREADS = min(4, os.cpu_count() or 1)
# Rows: haematoxylin from OD (Ruifrok-Johnston), and the mean OD of R, G, B.
_H_AND_MEAN = np.stack([ops.HED_FROM_RGB[:, 0], np.full(3, 1 / 3, np.float32)]).astype(np.float32)
SOFT_BOUND = 8.0  # standardised values are bounded softly to +-8 (see DescriptorEncoder.encode)

# Fixed thresholds in optical density units (this project's choice, tuned on H&E).
TISSUE_GREEN_OD = 0.1  # green OD above this: stained tissue (both stains absorb green), even pale fat septa
WHITE_OD = 0.06
# Means over tissue add this many 2 um/px pixels of zero to the count: with little tissue
# (glass, fat) they shrink to 0 instead of measuring a few stray pixels.
TISSUE_PRIOR_PX = 30
DARK_OD = 1.0
NUCLEUS_H = (0.25, 0.5)  # haematoxylin concentration of nuclear and dense nuclear pixels
NUCLEUS_RELATIVE_H = 0.05  # haematoxylin above the 8 um neighbourhood mean: a local blob
MAX_BLOB_AREA_PX = 500.0  # caps the mean blob area (at 1 um/px) where blobs merge
STAIN_RANGES = {"h": (-0.2, 2.0), "e": (-0.2, 1.2), "d": (-0.4, 0.8), "od": (0.0, 1.6)}  # histogram spans

FEATURE_NAMES: tuple[str, ...] = (
    "tissue_share",
    "nonwhite_share",
    "dark_share",
    *(f"{stain}_{stat}" for stain in ("h", "e", "d", "od") for stat in ("mean", "std", "p10", "p50", "p90")),
    "tissue_h_mean",
    "tissue_e_mean",
    "tissue_d_mean",
    "tissue_od_mean",
    "tissue_h_fraction",
    "r_mean",
    "g_mean",
    "b_mean",
    "r_std",
    "g_std",
    "b_std",
    "sat_mean",
    "sat_std",
    "value_mean",
    "opp_a_mean",
    "opp_b_mean",
    "opp_a_std",
    "opp_b_std",
    "hue_cos",
    "hue_sin",
    "grad_od_1um",
    "grad_od_2um",
    "grad_od_4um",
    "grad_h_1um",
    "grad_h_2um",
    "grad_h_4um",
    "coherence_4um",
    "coherence_8um",
    "localvar_od_2um",
    "localvar_od_4um",
    "localvar_h_2um",
    "localvar_h_4um",
    "autocorr_od_1",
    "autocorr_od_2",
    "autocorr_od_4",
    "autocorr_od_8",
    "autocorr_h_1",
    "autocorr_h_3",
    "rank_low_1um",
    "rank_mid_1um",
    "rank_high_1um",
    "rank_low_2um",
    "rank_mid_2um",
    "rank_high_2um",
    "block_std_h",
    "block_std_e",
    "block_std_od",
    "nuclei1_share",
    "nuclei1_count",
    "nuclei1_mean_area",
    "nuclei1_thickness",
    "nuclei1_tissue_share",
    "nuclei2_share",
    "nuclei2_count",
    "nuclei2_mean_area",
    "nuclei2_thickness",
    "nuclei_local_share",
    "nuclei_local_count",
)
EMBED_DIM = len(FEATURE_NAMES)

# Shares, counts, gradient energies and variances are skewed and matter most near zero
# (a little tissue on glass is fat, not glass; a few nuclei is stroma, not tumour): they
# enter as log(value + offset), the offset being the smallest difference worth seeing.
_LOG_OFFSETS = {"share": 0.01, "count": 0.02, "grad_": 0.003, "localvar_": 1e-5}
_LOG_INDEX = np.array([i for i, name in enumerate(FEATURE_NAMES) if any(key in name for key in _LOG_OFFSETS)])
_LOG_OFFSET = np.array(
    [next(offset for key, offset in _LOG_OFFSETS.items() if key in FEATURE_NAMES[i]) for i in _LOG_INDEX],
    np.float32,
)

DEFAULT_CFG = EncoderCfg(
    name="default",
    arch=None,
    input_size=224,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    native_mpp=0.5,
    embed_dim=EMBED_DIM,
    pooling="descriptor",
    license="part of napari_care; no third-party weights",
    description=f"built-in H&E descriptor ({EMBED_DIM} dims, numpy, no weights): "
    "stains, colour, texture, nuclei",
)


def raw_descriptor(tiles: np.ndarray) -> np.ndarray:
    """Unstandardised descriptor ``[B, EMBED_DIM]`` float32 of RGB uint8 tiles ``[B, S, S, 3]``.

    Chunks of the batch run in a small thread pool: numpy releases the GIL in its loops.
    """
    chunks = [tiles[start : start + CHUNK_TILES] for start in range(0, len(tiles), CHUNK_TILES)]
    if len(chunks) == 1:
        return _describe_chunk(chunks[0])
    return np.concatenate(list(_thread_pool().map(_describe_chunk, chunks)))


@functools.cache
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=DESCRIPTOR_THREADS, thread_name_prefix="napari-care-descriptor")


def _describe_chunk(tiles: np.ndarray) -> np.ndarray:
    batch = len(tiles)
    sums, pixels_per_sum = ops.block_sum(tiles, WORK_PX)  # [B, 3, 112, 112] planar
    od = np.take(ops.optical_density_lut(pixels_per_sum), sums)
    # Haematoxylin and mean OD at 1 um/px (nuclei, fine texture); all three stains at
    # 2 um/px, where their means are the same and the percentiles lose nothing.
    side = od.shape[-1]
    h, od_mean = (_H_AND_MEAN @ od.reshape(batch, 3, -1)).reshape(batch, 2, side, side).transpose(1, 0, 2, 3)
    od_2um = ops.mean_pool(od, 2)
    hed_2um = ops.HED_FROM_RGB.T @ od_2um.reshape(batch, 3, -1)  # [B, 3, P] H, E, D
    od_mean_2um = od_2um.mean(axis=1, dtype=np.float32)
    tissue = od[:, 1] > TISSUE_GREEN_OD
    tissue_2um = od_2um[:, 1] > TISSUE_GREEN_OD

    features = [_share(tissue), _share(od_mean >= WHITE_OD), _share(od_mean > DARK_OD)]
    features += _stains(h, od_mean, hed_2um, od_mean_2um.reshape(batch, -1), tissue_2um.reshape(batch, -1))
    rgb_2um = ops.mean_pool(sums, 2) * np.float32(1 / (255 * pixels_per_sum))  # [B, 3, 56, 56]
    features += _colour(rgb_2um.reshape(batch, 3, -1))
    h_2um, e_2um = (hed_2um[:, k].reshape(od_mean_2um.shape) for k in (0, 1))
    features += _texture(od_mean_2um, h_2um, e_2um, od_mean, h)
    features += _nuclei(h, h_2um, tissue)
    raw = np.stack(features, axis=1).astype(np.float32)
    raw[:, _LOG_INDEX] = np.log(np.maximum(raw[:, _LOG_INDEX], 0.0) + _LOG_OFFSET)
    return raw


def _share(mask: np.ndarray) -> np.ndarray:
    """Share of true pixels per tile of a ``[B, H, W]`` mask."""
    return mask.reshape(len(mask), -1).mean(axis=1)


def _stains(
    h: np.ndarray, od_mean: np.ndarray, hed_2um: np.ndarray, od_mean_2um: np.ndarray, tissue_2um: np.ndarray
) -> list[np.ndarray]:
    """Colour-deconvolution statistics: per stain mean, spread, percentiles; tissue means."""
    batch = len(h)
    maps = {"h": hed_2um[:, 0], "e": hed_2um[:, 1], "d": hed_2um[:, 2], "od": od_mean_2um}
    finest = {
        "h": h.reshape(batch, -1),
        "od": od_mean.reshape(batch, -1),
    }  # spread at the finest scale at hand
    features: list[np.ndarray] = []
    for name, values in maps.items():
        features += [values.mean(axis=1), finest.get(name, values).std(axis=1)]
        features += list(ops.histogram_quantiles(values, *STAIN_RANGES[name], (0.1, 0.5, 0.9)).T)
    tissue_count = tissue_2um.sum(axis=1) + TISSUE_PRIOR_PX
    tissue_h, tissue_e, tissue_d, tissue_od = (
        (values * tissue_2um).sum(axis=1) / tissue_count for values in maps.values()
    )
    h_fraction = tissue_h / (np.abs(tissue_h) + np.abs(tissue_e) + 1e-3)
    return [*features, tissue_h, tissue_e, tissue_d, tissue_od, h_fraction]


def _colour(rgb: np.ndarray) -> list[np.ndarray]:
    """Colour statistics of planar ``[B, 3, P]`` RGB in [0, 1]."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    value = np.maximum(np.maximum(r, g), b)
    saturation = (value - np.minimum(np.minimum(r, g), b)) / (value + 1e-3)
    opp_a, opp_b = r - g, 0.5 * (r + g) - b  # red-green and yellow-blue opponent axes
    # Hue as a unit vector on the opponent plane (no wrap-around), weighted by saturation
    # so that the faint tint of glass counts for little.
    norm = np.sqrt(opp_a * opp_a + opp_b * opp_b) + 1e-3
    return [
        r.mean(axis=1),
        g.mean(axis=1),
        b.mean(axis=1),
        r.std(axis=1),
        g.std(axis=1),
        b.std(axis=1),
        saturation.mean(axis=1),
        saturation.std(axis=1),
        value.mean(axis=1),
        opp_a.mean(axis=1),
        opp_b.mean(axis=1),
        opp_a.std(axis=1),
        opp_b.std(axis=1),
        (saturation * opp_a / norm).mean(axis=1),
        (saturation * opp_b / norm).mean(axis=1),
    ]


def _texture(
    od_2um: np.ndarray, h_2um: np.ndarray, e_2um: np.ndarray, od_1um: np.ndarray, h_1um: np.ndarray
) -> list[np.ndarray]:
    """Multi-scale texture of the OD and haematoxylin maps."""
    od_4um, h_4um = ops.mean_pool(od_2um, 2), ops.mean_pool(h_2um, 2)
    return [
        ops.gradient_magnitude(od_1um),
        ops.gradient_magnitude(od_2um),
        ops.gradient_magnitude(od_4um),
        ops.gradient_magnitude(h_1um),
        ops.gradient_magnitude(h_2um),
        ops.gradient_magnitude(h_4um),
        ops.coherence(od_2um, 2),
        ops.coherence(od_2um, 4),
        ops.local_variance(od_1um, od_2um),
        ops.local_variance(od_2um, od_4um),
        ops.local_variance(h_1um, h_2um),
        ops.local_variance(h_2um, h_4um),
        *ops.autocorrelation(od_1um, (1, 2, 4, 8)).T,
        *ops.autocorrelation(h_1um, (1, 3)).T,
        *ops.neighbour_rank_shares(od_1um, 0.02).T,
        *ops.neighbour_rank_shares(od_2um, 0.02).T,
        ops.mean_pool(h_2um, 4).std(axis=(1, 2)),
        ops.mean_pool(e_2um, 4).std(axis=(1, 2)),
        ops.mean_pool(od_4um, 2).std(axis=(1, 2)),
    ]


def _nuclei(h: np.ndarray, h_2um: np.ndarray, tissue: np.ndarray) -> list[np.ndarray]:
    """Nuclear-density proxy from thresholded haematoxylin at 1 um/px.

    Two absolute thresholds (nuclear and dense nuclear pixels, comparable across slides):
    share, blob count, mean blob area (um^2 / 100) and thickness; the share of tissue that
    is nuclear; and a relative mask (H above its 8 um neighbourhood: robust to pale
    staining): share and blob count.
    """
    pixels = float(h.shape[1] * h.shape[2])
    tissue_count = tissue.sum(axis=(1, 2)) + 4 * TISSUE_PRIOR_PX  # 4 px at 1 um/px per 2 um/px pixel
    features: list[np.ndarray] = []
    for threshold in NUCLEUS_H:
        mask = h > threshold
        area = mask.sum(axis=(1, 2)).astype(np.float32)
        count = np.maximum(ops.euler_number(mask), 0.0)
        mean_area = np.minimum(area / np.maximum(count, 1.0), MAX_BLOB_AREA_PX) / 100.0
        features += [area / pixels, count / 100.0, mean_area, ops.eroded_share(mask)]
        if threshold == NUCLEUS_H[0]:
            features.append((mask & tissue).sum(axis=(1, 2)) / tissue_count)
    neighbourhood = np.repeat(np.repeat(ops.mean_pool(h_2um, 4), 8, axis=1), 8, axis=2)  # 8 um blocks
    relative = (h - neighbourhood > NUCLEUS_RELATIVE_H) & tissue
    features += [relative.sum(axis=(1, 2)) / pixels, np.maximum(ops.euler_number(relative), 0.0) / 100.0]
    return features


class DescriptorEncoder:
    """The ``default`` encoder: :func:`raw_descriptor`, standardised with fixed constants."""

    def __init__(self, cfg: EncoderCfg = DEFAULT_CFG) -> None:
        self.cfg = cfg
        self._median = np.asarray(REFERENCE_MEDIAN, np.float32)
        self._scale = np.asarray(REFERENCE_SCALE, np.float32)

    @property
    def embed_dim(self) -> int:
        """Number of descriptor dimensions."""
        return self.cfg.embed_dim

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Name of each dimension, in order."""
        return FEATURE_NAMES

    def __repr__(self) -> str:
        return f"DescriptorEncoder('default', embed_dim={self.embed_dim})"

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """RGB uint8 tiles ``[B, S, S, 3]`` -> standardised float32 ``[B, EMBED_DIM]``."""
        tiles = check_tiles(tiles, self.cfg.name)
        if len(tiles) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        standardised = (raw_descriptor(tiles) - self._median) / self._scale
        # Soft bound: linear near 0, at most +-SOFT_BOUND, so a dimension rare in the
        # reference set (DAB on an IHC slide, say) cannot dominate distances.
        bounded = SOFT_BOUND * np.tanh(standardised / SOFT_BOUND)
        return check_finite(bounded.astype(np.float32, copy=False), self.cfg.name)


@register_encoder(DEFAULT_CFG)
def _create_default(
    cfg: EncoderCfg, *, weights: str | None = None, model_kwargs: dict | None = None, **_device: Any
) -> DescriptorEncoder:
    # The device does not matter to numpy; weights and model arguments would be a mistake.
    if weights is not None or model_kwargs:
        raise ValueError(
            f"encoder 'default' is a fixed numpy descriptor: it takes no weights or model_kwargs "
            f"(got weights={weights!r}, model_kwargs={model_kwargs!r})"
        )
    return DescriptorEncoder(cfg)
