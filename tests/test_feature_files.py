"""Feature files of other tools: CLAM's h5 without attributes and its .pt files, TRIDENT's empty
files and job folders, and where each layout puts and finds them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from napari_care.core.feature_files import (
    feature_file_stem,
    features_path,
    find_feature_files,
    trident_encoder_name,
)
from napari_care.core.features import EmptyFeaturesError, PatchFeatures, load_features, save_features
from napari_care.core.train.feature_views import load_feature_folder


def _grid(columns: int, rows: int, step: float, origin=(1000, 2000)) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(columns), np.arange(rows))
    return (np.stack([gx.ravel(), gy.ravel()], axis=1) * step + np.asarray(origin)).astype(np.int64)


def _features(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def write_clam(path, features, coords, **coord_attrs):
    """An h5 file as CLAM's extract_features_fp writes it: 'features' and 'coords', no attributes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
        f["coords"].attrs.update(coord_attrs)
    return path


def test_clam_without_attributes_takes_the_coords_spacing(tmp_path):
    coords = _grid(4, 3, 256)[::-1]  # CLAM's order is not the grid's
    pf = load_features(write_clam(tmp_path / "h5_files" / "slide-1.h5", _features(12), coords))
    assert (pf.patch_size_px, pf.patch_size_level0, pf.mpp) == (256, 256.0, None)
    assert pf.slide_id == "slide-1" and len(pf) == 12
    np.testing.assert_array_equal(pf.grid.min(axis=0), np.rint(np.array([1000, 2000]) / 256))
    given = load_features(tmp_path / "h5_files" / "slide-1.h5", patch_size_px=224)
    assert (given.patch_size_px, given.patch_size_level0) == (224, 256.0)  # 256 level-0 px read at 224


def test_clam_with_holes_in_the_tissue_still_has_one_spacing(tmp_path):
    coords = np.delete(_grid(5, 5, 512), [1, 2, 7, 12, 13], axis=0)  # gaps of 2 and 3 steps
    pf = load_features(write_clam(tmp_path / "holes.h5", _features(len(coords)), coords))
    assert pf.patch_size_level0 == 512.0


@pytest.mark.parametrize(
    ("coords", "problem"),
    [
        (np.array([[0, 0]]), "1 patch"),
        (np.array([[0, 0], [0, 0]]), "2 patch"),
        (np.array([[0, 0], [256, 0], [0, 512], [256, 512]]), "256 px along x but 512 px along y"),
        (np.array([[0, 0], [256, 0], [400, 0]]), "not on a grid of step 144"),
    ],
)
def test_an_ambiguous_spacing_says_so_and_asks_for_the_patch_size(tmp_path, coords, problem):
    path = write_clam(tmp_path / "odd.h5", _features(len(coords)), coords)
    with pytest.raises(ValueError, match=r"odd\.h5: the file records no patch size") as caught:
        load_features(path)
    assert problem in str(caught.value) and "--patch-size" in str(caught.value)


def test_clam_attributes_and_the_patch_size_override(tmp_path):
    coords = _grid(3, 2, 1024)
    path = write_clam(
        tmp_path / "lvl1.h5", _features(6), coords, patch_size=256, patch_level=1, downsample=4.0
    )
    pf = load_features(path)
    assert (pf.patch_size_px, pf.patch_size_level0) == (256, 1024.0)
    assert load_features(path, patch_size_px=512).patch_size_level0 == 2048.0  # the given side at that level
    with pytest.raises(ValueError, match="positive whole number"):
        load_features(path, patch_size_px=0)


def test_clam_pt_files_take_the_coords_of_their_h5(tmp_path):
    features, coords = _features(6, 16), _grid(3, 2, 256)
    write_clam(tmp_path / "h5_files" / "s.h5", features, coords)
    (tmp_path / "pt_files").mkdir()
    torch.save(torch.from_numpy(features * 2), tmp_path / "pt_files" / "s.pt")
    pf = load_features(tmp_path / "pt_files" / "s.pt")
    np.testing.assert_allclose(pf.features, features * 2)  # the .pt's features, the h5's coords
    np.testing.assert_array_equal(pf.coords, coords)
    assert pf.patch_size_level0 == 256.0 and pf.slide_id == "s"

    torch.save(torch.zeros(6, 16), tmp_path / "pt_files" / "alone.pt")
    with pytest.raises(ValueError, match=r"alone\.pt: a CLAM \.pt file holds no coords.*h5_files"):
        load_features(tmp_path / "pt_files" / "alone.pt")
    (tmp_path / "pt_files" / "junk.pt").write_bytes(b"not a torch file")
    write_clam(tmp_path / "h5_files" / "junk.h5", features, coords)
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable torch feature file"):
        load_features(tmp_path / "pt_files" / "junk.pt")


@pytest.mark.parametrize("features", [np.empty((0,), np.float32), np.empty((0, 768), np.float32)])
def test_trident_empty_files_are_their_own_error(tmp_path, features):
    # TRIDENT's extract_patch_features of a slide without tissue: features (0,) or (0, D), coords (0, 2)
    path = write_clam(tmp_path / "features_conch_v15" / "blank.h5", features, np.empty((0, 2), np.int64))
    with pytest.raises(EmptyFeaturesError, match=r"blank\.h5: no patches"):
        load_features(path)


def test_features_stored_as_strings_are_named(tmp_path):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.array([[b"a", b"b"]] * 3))
        f.create_dataset("coords", data=_grid(3, 1, 256))
    with pytest.raises(ValueError, match=r"strings\.h5: 'features' is not numeric"):
        load_features(path)


def test_our_files_carry_the_attributes_trident_and_clam_read(tmp_path):
    pf = PatchFeatures(_features(6), _grid(3, 2, 448), 224, 448.0, 0.5, "conch_v1_5", "s-1")
    path = save_features(features_path(tmp_path, "s-1", "conch_v1_5", "trident"), pf)
    assert path == tmp_path / "features_conch_v15" / "s-1.h5"
    with h5py.File(path) as f:
        coords, features = dict(f["coords"].attrs), dict(f["features"].attrs)
    # TRIDENT's read_coords and CLAM's legacy reader (patch_level, custom_downsample)
    assert coords["patch_size"] == 224 and coords["patch_size_level0"] == 448
    assert (coords["level0_magnification"], coords["target_magnification"]) == (40, 20)
    assert (coords["patch_level"], coords["custom_downsample"]) == (0, 2)
    assert features["encoder"] == "conch_v1_5" and features["name"] == "s-1"
    back = load_features(path)
    assert (back.patch_size_px, back.patch_size_level0, back.mpp, back.encoder) == (
        224,
        448.0,
        0.5,
        "conch_v1_5",
    )


def test_trident_names_and_paths():
    assert trident_encoder_name("conch_v1_5") == "conch_v15" == trident_encoder_name("conch_v15")
    assert trident_encoder_name("uni2-h") == "uni_v2" and trident_encoder_name("default") == "default"
    assert trident_encoder_name("timm:resnet18") == "timm_resnet18"
    assert features_path("out", "a", layout="napari_care").as_posix() == "out/a.features.h5"
    with pytest.raises(ValueError, match="layout must be one of napari_care, trident"):
        features_path("out", "a", layout="clam")
    assert [feature_file_stem(n) for n in ("A.features.h5", "A.h5", "A.pt", "A.b.hdf5")] == [
        "A",
        "A",
        "A",
        "A.b",
    ]


def _touch_features(path, n: int = 4, d: int = 8):
    return write_clam(path, _features(n, d), _grid(n, 1, 256), patch_size=256)


def test_find_in_each_layout(tmp_path):
    job = tmp_path / "job"
    for stem in ("b", "a"):
        _touch_features(job / "20x_256px_0px_overlap" / "features_conch_v15" / f"{stem}.h5")
    found = find_feature_files(job)
    assert list(found) == ["a", "b"] and found["a"].parent.name == "features_conch_v15"
    assert find_feature_files(job / "20x_256px_0px_overlap") == found
    assert find_feature_files(job / "20x_256px_0px_overlap" / "features_conch_v15") == found

    _touch_features(job / "20x_256px_0px_overlap" / "features_uni_v1" / "a.h5")
    with pytest.raises(ValueError, match=r"several encoders.*features_conch_v15.*features_uni_v1.*--encoder"):
        find_feature_files(job)
    assert find_feature_files(job, encoder="conch_v1_5") == found  # any spelling picks the folder
    assert list(find_feature_files(job, encoder="uni")) == ["a"]
    with pytest.raises(ValueError, match="no features of encoder 'virchow2'"):
        find_feature_files(job, encoder="virchow2")

    clam = tmp_path / "clam"
    _touch_features(clam / "h5_files" / "s.h5")
    (clam / "pt_files").mkdir()
    torch.save(torch.zeros(4, 8), clam / "pt_files" / "s.pt")
    assert find_feature_files(clam) == {"s": clam / "h5_files" / "s.h5"}  # the h5 files hold the coords
    assert find_feature_files(clam / "pt_files") == {"s": clam / "pt_files" / "s.pt"}

    plain = tmp_path / "plain"
    _touch_features(plain / "x.features.h5")
    (plain / "x.slide_features.h5").write_bytes(b"")  # other outputs of a run are no patch features
    (plain / "x.mixmag.h5").write_bytes(b"")
    (plain / ".x.features.h5.abcd1234.part").write_bytes(b"")
    assert find_feature_files(plain) == {"x": plain / "x.features.h5"}
    _touch_features(plain / "x.h5")
    with pytest.raises(ValueError, match="two feature files of slide 'x'"):
        find_feature_files(plain)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_feature_files(tmp_path / "nowhere")


def test_a_folder_for_training_or_evaluation_leaves_empty_files_out_with_one_warning(tmp_path):
    folder = tmp_path / "features_default"
    for stem in ("a", "b"):
        _touch_features(folder / f"{stem}.h5")
    for stem in ("empty1", "empty2"):
        write_clam(folder / f"{stem}.h5", np.empty((0,), np.float32), np.empty((0, 2), np.int64))
    with pytest.warns(UserWarning, match=r"2 of 4 feature files hold no patches.*empty1, empty2") as caught:
        slides = load_feature_folder(folder)
    assert [s.slide_id for s in slides] == ["a", "b"] and len(caught) == 1
    for stem in ("a", "b"):
        (folder / f"{stem}.h5").unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="every feature file is empty"):
        load_feature_folder(folder)
