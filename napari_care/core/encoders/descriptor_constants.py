"""Fixed standardisation constants of the built-in descriptor.

Every descriptor dimension ``i`` is standardised as ``(raw_i - REFERENCE_MEDIAN[i]) /
REFERENCE_SCALE[i]``, with constants computed once from a fixed reference set, so that
features of different slides, batches and runs are comparable (nothing is normalised per
batch).

Reference set: all non-overlapping 224-px tiles, on a grid from the top-left corner, of
the level-0 images of two real H&E slides from the project's test data
(``CMU-1-Small-Region.svs``: skin, 0.499 um/px, 117 tiles; ``TCGA-CR-7395-01A-01-TS1.svs``:
a frozen section of head-and-neck carcinoma, 285 tiles), glass included. Median and
scale per dimension; the scale is the larger of two robust estimates of a standard
deviation, the interquartile range / 1.349 and the 5-95 % range / 3.29 (equal for a
normal distribution; the second keeps dimensions that are mostly constant in the
reference set, such as dense-nucleus shares, from exploding), and at least 1e-3.

To recompute after changing the descriptor: ``python benchmarks/bench_encoder.py
--calibrate path/to/slides`` prints the two tuples to paste here; a test checks that they
match the code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REFERENCE_SLIDES = ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs")
REFERENCE_TILE_PX = 224


def reference_tiles(slides_dir: str | Path) -> np.ndarray:
    """The reference tiles ``[N, 224, 224, 3]`` uint8 cut from the reference slides."""
    import tifffile  # a backend loads when a slide of its kind opens

    tiles = []
    for name in REFERENCE_SLIDES:
        image = tifffile.imread(Path(slides_dir) / name)
        height, width = image.shape[:2]
        tiles += [
            image[y : y + REFERENCE_TILE_PX, x : x + REFERENCE_TILE_PX]
            for y in range(0, height - REFERENCE_TILE_PX + 1, REFERENCE_TILE_PX)
            for x in range(0, width - REFERENCE_TILE_PX + 1, REFERENCE_TILE_PX)
        ]
    return np.stack(tiles)


def robust_constants(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension median and robust scale of raw descriptors ``[N, D]``."""
    median = np.median(raw, axis=0)
    p5, q25, q75, p95 = np.percentile(raw, [5, 25, 75, 95], axis=0)
    scale = np.maximum.reduce([(q75 - q25) / 1.349, (p95 - p5) / 3.29, np.full(raw.shape[1], 1e-3)])
    return median.astype(np.float32), scale.astype(np.float32)


# fmt: off
REFERENCE_MEDIAN = (
    -0.227815, -0.222821, -4.60517, 0.0340619, 0.0446722, -0.0109375, 0.0234375, 0.075,
    0.135767, 0.0794953, 0.0078125, 0.117187, 0.292188, 0.193687, 0.0812085, 0.021875, 0.190625,
    0.303125, 0.203453, 0.0944909, 0.0375, 0.2125, 0.3375, 0.0390824, 0.208763, 0.226507,
    0.245199, 0.140902, 0.818505, 0.522289, 0.6692, 0.0761436, 0.143973, 0.110801, 0.343953,
    0.130692, 0.818514, 0.213009, -0.000951064, 0.082808, 0.0147668, 0.327251, -0.000951118,
    -2.58058, -2.34397, -2.38644, -2.99098, -2.98004, -3.23065, 0.674421, 0.430702, -6.71535,
    -6.20194, -7.47888, -7.4651, 0.697959, 0.417699, 0.186761, 0.106119, 0.41305, 0.0841902,
    0.533388, 0.396653, 0.0660744, 0.516461, 0.34928, 0.125514, 0.0191547, 0.0497532, 0.0517426,
    -4.39719, -2.30259, 0.0172556, 0, -4.33828, -4.60517, -3.91202, 0, 0, -2.56081, 0.585001,
)
REFERENCE_SCALE = (
    3.23043, 3.22054, 0.227773, 0.0624281, 0.0899617, 0.0254818, 0.0417933, 0.187548, 0.175128,
    0.0668753, 0.0648629, 0.178373, 0.243236, 0.161912, 0.0697245, 0.0694959, 0.16679, 0.250185,
    0.167736, 0.0869726, 0.074129, 0.185322, 0.259451, 0.121679, 0.187215, 0.153504, 0.171365,
    0.238104, 0.134061, 0.382112, 0.254959, 0.062033, 0.125833, 0.0953378, 0.332296, 0.112211,
    0.13347, 0.25376, 0.0141177, 0.0718324, 0.0140078, 0.332651, 0.0292744, 2.20701, 2.36301,
    2.25829, 1.68827, 1.68865, 1.32053, 0.247685, 0.207237, 3.2367, 3.27759, 2.66315, 2.81121,
    0.459663, 0.331757, 0.240637, 0.18594, 0.296913, 0.151869, 0.410267, 0.332156, 0.0727199,
    0.403629, 0.278937, 0.123485, 0.0571905, 0.0484932, 0.059115, 1.02712, 2.11635, 1.51976,
    0.170511, 1.23476, 0.793682, 1.04352, 0.0884077, 0.10892, 1.85851, 3.18993,
)
# fmt: on
