"""PatchFeatures and its HDF5 files: our own, TRIDENT's and CLAM's layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_care.core.features import PatchFeatures, load_features, save_features


def _features(n: int = 6, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _coords(n: int = 6, step: int = 448) -> np.ndarray:
    grid = np.stack([np.arange(n) % 3, np.arange(n) // 3], axis=1)
    return (grid * step + np.array([step, 2 * step])).astype(np.int64)


def test_patch_features_grid_and_checks():
    pf = PatchFeatures(_features(), _coords(), 224, 448.0, 1.0, "default", "s1")
    np.testing.assert_array_equal(pf.grid, [[1, 2], [2, 2], [3, 2], [1, 3], [2, 3], [3, 3]])
    assert pf.magnification == 10.0 and pf.embed_dim == 8 and len(pf) == 6
    overlapping = PatchFeatures(
        _features(), _coords(step=384), 224, 448.0, 1.0, "default", stride_level0=384.0
    )
    np.testing.assert_array_equal(overlapping.grid, pf.grid)
    with pytest.raises(ValueError, match="6 feature rows but 5 coords"):
        PatchFeatures(_features(), _coords(5), 224, 448.0, 1.0, "x")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        PatchFeatures(np.zeros(6, np.float32), _coords(), 224, 448.0, 1.0, "x")


def test_round_trip_and_trident_attributes(tmp_path):
    pf = PatchFeatures(_features(), _coords(), 224, 448.0, 1.0, "default", "slide-7")
    path = save_features(tmp_path / "out" / "slide-7.h5", pf)
    assert [p.name for p in path.parent.iterdir()] == ["slide-7.h5"]  # no temporary left
    back = load_features(path)
    np.testing.assert_array_equal(back.features, pf.features)
    np.testing.assert_array_equal(back.coords, pf.coords)
    assert (back.patch_size_px, back.patch_size_level0, back.mpp, back.encoder, back.slide_id) == (
        224,
        448.0,
        1.0,
        "default",
        "slide-7",
    )
    with h5py.File(path, "r") as f:
        assert f["features"].dtype == np.float32 and f["features"].shape == (6, 8)
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (6, 2)
        assert f.attrs["patch_size"] == 224 and f.attrs["patch_size_level0"] == 448
        assert f.attrs["magnification"] == 10.0 and f.attrs["encoder"] == "default"
        attrs = dict(f["coords"].attrs)
    assert attrs["target_magnification"] == 10 and attrs["level0_magnification"] == 20
    assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 448 and attrs["name"] == "slide-7"


def test_round_trip_without_mpp(tmp_path):
    pf = PatchFeatures(_features(), _coords(), 256, 1024.0, None, "default")
    back = load_features(save_features(tmp_path / "a.h5", pf))
    assert back.mpp is None and back.patch_size_level0 == 1024.0 and back.slide_id == "a"


def _write_trident(path, features, coords, **coord_attrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
        f["features"].attrs.update({"name": path.stem, "savetodir": str(path.parent)})
        f["coords"].attrs.update(coord_attrs)


@pytest.mark.parametrize("batched", [True, False])
def test_reads_trident_conch_v15_files(tmp_path, batched):
    # CONCH v1.5 features of 512 px patches at 20x from a 40x slide, as TRIDENT writes them
    features = _features(5, 768)
    coords = _coords(5, step=1024)
    path = tmp_path / "20x_512px_0px_overlap" / "features_conch_v15" / "TCGA-XX.h5"
    _write_trident(
        path,
        features[None] if batched else features,
        coords[None] if batched else coords,
        patch_size=512,
        patch_size_level0=1024,
        level0_magnification=40,
        target_magnification=20,
        overlap=0,
        name="TCGA-XX",
        savetodir=str(tmp_path),
    )
    pf = load_features(path)
    assert pf.features.shape == (5, 768) and pf.coords.shape == (5, 2)
    assert pf.patch_size_px == 512 and pf.patch_size_level0 == 1024.0 and pf.mpp == 0.5
    assert pf.encoder == "conch_v15" and pf.slide_id == "TCGA-XX"
    np.testing.assert_array_equal(pf.grid, coords // 1024)


def test_trident_without_level0_size_uses_magnifications(tmp_path):
    path = tmp_path / "t.h5"
    _write_trident(
        path, _features(), _coords(step=512), patch_size=256, level0_magnification=40, target_magnification=20
    )
    assert load_features(path).patch_size_level0 == 512.0


@pytest.mark.parametrize(
    ("attrs", "step", "size0"),
    [
        ({"patch_level": 0, "patch_size": 256}, 256, 256.0),
        ({"patch_level": 1, "patch_size": 256, "downsample": np.array([4.0, 4.0])}, 1024, 1024.0),
        ({"patch_level": 1, "patch_size": 256}, 1024, 1024.0),  # no downsample: from the coords' spacing
    ],
)
def test_reads_clam_files(tmp_path, attrs, step, size0):
    path = tmp_path / "h5_files" / "slide_1.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=_features(6, 1024))
        coords = f.create_dataset("coords", data=_coords(6, step=step))
        coords.attrs.update(attrs)
        coords.attrs["name"] = "slide_1"
    pf = load_features(path)
    assert pf.patch_size_level0 == size0 and pf.patch_size_px == 256 and pf.mpp is None
    assert pf.slide_id == "slide_1" and pf.features.shape == (6, 1024)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        load_features(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"junk\.h5"):
        load_features(junk)

    bad = _features()
    bad[1, 3], bad[4, 0] = np.nan, np.inf
    nan_path = tmp_path / "nan.h5"
    _write_trident(nan_path, bad, _coords(), patch_size=224, patch_size_level0=448)
    with pytest.raises(ValueError, match=r"nan.h5: 2 of 6 patches have NaN or infinite"):
        load_features(nan_path)

    no_size = tmp_path / "nosize.h5"  # CLAM: no attributes at all; the size is the coords' spacing
    _write_trident(no_size, _features(), _coords())
    assert (load_features(no_size).patch_size_px, load_features(no_size).patch_size_level0) == (448, 448.0)

    misshaped = tmp_path / "misshaped.h5"
    _write_trident(misshaped, _features(), np.zeros((6, 3), np.int64), patch_size=224)
    with pytest.raises(ValueError, match=r"misshaped.h5: 'coords' has shape \(6, 3\)"):
        load_features(misshaped)

    missing = tmp_path / "missing.h5"
    with h5py.File(missing, "w") as f:
        f.create_dataset("feats", data=_features())
    with pytest.raises(ValueError, match=r"missing.h5: missing dataset\(s\) \['features', 'coords'\]"):
        load_features(missing)

    single = tmp_path / "single.h5"
    _write_trident(single, _features(1), _coords(1), patch_size=224, patch_level=1)
    with pytest.raises(ValueError, match=r"single\.h5: cannot tell the patch size"):
        load_features(single)
