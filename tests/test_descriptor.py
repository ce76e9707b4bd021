"""The built-in ``default`` descriptor: shape, determinism, standardisation, tissue types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_care.core.encoders import create_encoder
from napari_care.core.encoders import descriptor as D
from napari_care.core.encoders import descriptor_ops as ops
from napari_care.core.encoders.descriptor_constants import (
    REFERENCE_MEDIAN,
    REFERENCE_SCALE,
    reference_tiles,
    robust_constants,
)

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
GLASS_RGB = (255, 255, 255)


def stained(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """RGB uint8 from haematoxylin and eosin amounts (Beer-Lambert, Ruifrok vectors)."""
    vectors = ops.RGB_FROM_HED[:2] / np.linalg.norm(ops.RGB_FROM_HED[:2], axis=1, keepdims=True)
    od = h[..., None] * vectors[0] + e[..., None] * vectors[1]
    return np.clip(np.array(GLASS_RGB) * 10.0 ** (-od), 0, 255).astype(np.uint8)


def test_shape_dtype_and_size():
    encoder = create_encoder("default")
    tiles = np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    features = encoder.encode(tiles)
    assert features.shape == (5, encoder.embed_dim) and features.dtype == np.float32
    assert encoder.embed_dim == D.EMBED_DIM == len(encoder.feature_names) >= 64
    assert len(set(encoder.feature_names)) == D.EMBED_DIM
    assert np.abs(features).max() < D.SOFT_BOUND


def test_deterministic_and_independent_of_the_batch():
    encoder = create_encoder("default")
    tiles = np.random.default_rng(1).integers(0, 256, (70, 224, 224, 3), dtype=np.uint8)  # 3 threaded chunks
    batch = encoder.encode(tiles)
    np.testing.assert_array_equal(encoder.encode(tiles), batch)
    singles = np.concatenate([encoder.encode(tiles[i : i + 1]) for i in (0, 33, 69)])
    np.testing.assert_allclose(singles, batch[[0, 33, 69]], rtol=1e-5, atol=1e-5)


def test_resolution_handling():
    encoder = create_encoder("default")
    tile = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    upsampled = tile.repeat(2, axis=1).repeat(2, axis=2)  # same content, twice the pixels
    np.testing.assert_allclose(encoder.encode(upsampled), encoder.encode(tile), atol=1e-4)
    odd = encoder.encode(np.full((2, 250, 250, 3), 180, np.uint8))
    assert odd.shape == (2, D.EMBED_DIM) and np.isfinite(odd).all()


def test_bad_input():
    encoder = create_encoder("default")
    with pytest.raises(TypeError, match="uint8"):
        encoder.encode(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        encoder.encode([[0]])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        encoder.encode(np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="square"):
        encoder.encode(np.zeros((1, 224, 112, 3), np.uint8))
    assert encoder.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, D.EMBED_DIM)


def test_stain_and_tissue_features_measure_what_they_say():
    names = list(D.FEATURE_NAMES)
    zeros = np.zeros((224, 224))
    glass, eosin, haematoxylin = (
        stained(zeros, zeros),
        stained(zeros, zeros + 0.6),
        stained(zeros + 0.6, zeros),
    )
    raw = D.raw_descriptor(np.stack([glass, eosin, haematoxylin]))
    h_mean, e_mean, tissue = (
        raw[:, names.index("h_mean")],
        raw[:, names.index("e_mean")],
        raw[:, names.index("tissue_share")],
    )
    np.testing.assert_allclose(tissue, np.log([0.01, 1.01, 1.01]), atol=1e-3)  # log(share + 0.01)
    assert h_mean[2] == pytest.approx(0.6, abs=0.02) and abs(h_mean[1]) < 0.02
    assert e_mean[1] == pytest.approx(0.6, abs=0.02) and abs(e_mean[2]) < 0.02


def test_nuclei_are_counted():
    yy, xx = np.mgrid[:224, :224]
    h = np.zeros((224, 224))
    centres = [(20 + 40 * i, 20 + 40 * j) for i in range(5) for j in range(5)]  # 25 nuclei, radius 8 px
    for cy, cx in centres:
        h[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1.0
    raw = D.raw_descriptor(stained(h, np.full((224, 224), 0.3))[None])[0]
    names = list(D.FEATURE_NAMES)
    count = np.exp(raw[names.index("nuclei1_count")]) - 0.02  # log(count / 100 + 0.02)
    assert count * 100 == pytest.approx(25, abs=1)
    area_um2 = raw[names.index("nuclei1_mean_area")] * 100  # at 1 um/px: 16 um wide discs
    assert area_um2 == pytest.approx(np.pi * 4**2, rel=0.25)


def test_euler_number_counts_blobs():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 2:5, 2:5] = mask[0, 10:12, 10:18] = mask[0, 18, 0] = True
    ring = np.zeros((1, 9, 9), bool)
    ring[0, 2:7, 2:7], ring[0, 4, 4] = True, False
    assert ops.euler_number(mask)[0] == 3 and ops.euler_number(ring)[0] == 0


def test_synthetic_tissue_types_cluster_by_type(tmp_path):
    synthetic = pytest.importorskip("napari_care.core.synthetic.slides")
    tifffile = pytest.importorskip("tifffile")
    from scipy.cluster.vq import kmeans2

    slide = synthetic.build_synthetic_slide(
        tmp_path / "s.ome.tif", width=4096, height=3072, seed=0, swatch_px=512
    )
    image = tifffile.imread(slide.path)
    coords = np.array([(x, y) for y in range(0, 3072 - 223, 112) for x in range(0, 4096 - 223, 112)])
    shares = slide.truth_fractions(coords, 224)
    types, pure = shares.argmax(axis=1), shares.max(axis=1) >= 0.9
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(pure & (types == t)))[:8] for t in range(7)])
    labels = types[keep]
    assert len(np.unique(labels)) == 7, "the synthetic slide should hold pure tiles of all seven types"
    features = create_encoder("default").encode(
        np.stack([image[y : y + 224, x : x + 224] for x, y in coords[keep]])
    )

    distance = np.linalg.norm(features[:, None] - features[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    nearest_neighbour_accuracy = np.mean(labels[distance.argmin(axis=1)] == labels)
    assert nearest_neighbour_accuracy >= 0.85

    runs = [kmeans2(features, 7, minit="++", seed=seed) for seed in range(10)]
    _, cluster = min(runs, key=lambda run: ((features - run[0][run[1]]) ** 2).sum())
    purity = sum(np.bincount(labels[cluster == c]).max() for c in np.unique(cluster)) / len(labels)
    assert purity >= 0.8


def test_real_skin_epidermis_dermis_glass_differ():
    tifffile = pytest.importorskip("tifffile")
    path = SLIDES / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"no {path}")
    image = tifffile.imread(path)
    groups = {  # level-0 (x, y) corners of 224-px tiles, checked by eye
        "epidermis": [(1120, 1568), (1344, 896), (1120, 1792)],
        "dermis": [(896, 2240), (1568, 2016), (1120, 2464)],
        "glass": [(224, 2240), (1792, 448), (0, 1344)],
    }
    encoder = create_encoder("default")
    features = {
        name: encoder.encode(np.stack([image[y : y + 224, x : x + 224] for x, y in xy]))
        for name, xy in groups.items()
    }
    centroids = {name: f.mean(axis=0) for name, f in features.items()}
    for name, f in features.items():
        for tile in f:
            distances = {other: np.linalg.norm(tile - c) for other, c in centroids.items()}
            assert min(distances, key=distances.get) == name
            assert min(d for other, d in distances.items() if other != name) > 2 * distances[name]
    names = list(D.FEATURE_NAMES)
    assert centroids["epidermis"][names.index("h_mean")] > centroids["dermis"][names.index("h_mean")]
    assert (
        centroids["glass"][names.index("tissue_share")] < centroids["dermis"][names.index("tissue_share")] - 1
    )


def test_reference_constants_match_the_code():
    pytest.importorskip("tifffile")
    if not all(
        (SLIDES / name).is_file() for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs")
    ):
        pytest.skip(f"reference slides not in {SLIDES}")
    median, scale = robust_constants(D.raw_descriptor(reference_tiles(SLIDES)))
    np.testing.assert_allclose(median, REFERENCE_MEDIAN, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scale, REFERENCE_SCALE, rtol=1e-3, atol=1e-4)


def test_default_takes_no_weights():
    with pytest.raises(ValueError, match="takes no weights"):
        create_encoder("default", weights="uni.pth")
    assert create_encoder("default", device="cuda").embed_dim == D.EMBED_DIM  # device is irrelevant to numpy
