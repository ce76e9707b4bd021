"""Slide embeddings as files (``<stem>.slide_features.h5``, TRIDENT's slide features) and
``evaluate`` on a folder of them."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from napari_care.cli.app import main
from napari_care.core.embedding_files import is_slide_feature_folder, slide_embeddings
from napari_care.core.features import EmptyFeaturesError
from napari_care.core.progress import run_to_end
from napari_care.core.slide_features import (
    find_slide_features,
    load_slide_features,
    save_slide_features,
    slide_features_path,
)


def test_round_trip(tmp_path):
    vector = np.linspace(-1, 1, 512, dtype=np.float64).reshape(1, 512)
    path = save_slide_features(
        slide_features_path(tmp_path / "out", "TCGA-1"),
        vector,
        slide_encoder="Zipper-1/CARE",
        patch_encoder="conch_v1_5",
        settings={"k": 4},
    )
    assert path == tmp_path / "out" / "TCGA-1.slide_features.h5"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    with h5py.File(path) as f:
        assert f["features"].shape == (512,) and f["features"].dtype == np.float32
        assert f["features"].attrs["slide_encoder"] == "Zipper-1/CARE"
    back = load_slide_features(path)
    np.testing.assert_allclose(back.embedding, vector.ravel().astype(np.float32))
    assert (back.name, back.slide_encoder, back.patch_encoder) == ("TCGA-1", "Zipper-1/CARE", "conch_v1_5")
    with pytest.raises(ValueError, match="empty or not finite; nothing written"):
        save_slide_features(
            tmp_path / "nan.slide_features.h5", [np.nan], slide_encoder="x", patch_encoder="y"
        )
    assert not (tmp_path / "nan.slide_features.h5").exists()


def write_trident_slide(path, features):
    """A slide feature file as TRIDENT's extract_slide_features writes it (features [D] and coords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        f["features"].attrs.update({"name": path.stem, "savetodir": str(path.parent)})
    return path


def test_trident_slide_features_and_their_faults(tmp_path):
    folder = tmp_path / "slide_features_titan"
    good = write_trident_slide(folder / "a.h5", np.ones(768, np.float32))
    assert load_slide_features(good).name == "a" and load_slide_features(good).slide_encoder == ""
    blank = write_trident_slide(folder / "blank.h5", np.empty((0,), np.float32))
    with pytest.raises(EmptyFeaturesError, match=r"blank\.h5: the slide embedding is empty"):
        load_slide_features(blank)
    patches = write_trident_slide(tmp_path / "patches.h5", np.ones((5, 768), np.float32))
    with pytest.raises(ValueError, match=r"patches\.h5: 'features' has shape \(5, 768\): patch features"):
        load_slide_features(patches)
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.h5: not a readable HDF5 slide feature file"):
        load_slide_features(tmp_path / "junk.h5")
    assert list(find_slide_features(folder)) == ["a", "blank"]
    assert is_slide_feature_folder(folder) and not is_slide_feature_folder(tmp_path)


def _cohort(folder, n: int = 12, *, empty: tuple[str, ...] = ()):
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(n):
        label = ["normal", "tumour"][i % 2]
        vector = rng.normal(size=16) + 4.0 * (label == "tumour")
        name = f"s{i:02d}"
        save_slide_features(
            folder / f"{name}.slide_features.h5", vector, slide_encoder="x", patch_encoder="y"
        )
        labels[name] = label
    for name in empty:
        with h5py.File(folder / f"{name}.slide_features.h5", "w") as f:
            f.create_dataset("features", data=np.empty((0,), np.float32))
        labels[name] = "tumour"
    return labels


def test_a_folder_of_slide_features_is_read_as_it_is(tmp_path):
    _cohort(tmp_path)
    (tmp_path / "s00.care.json").write_text("{}")  # other outputs of segment sit beside them
    slide_ids, vectors = run_to_end(slide_embeddings(tmp_path))
    assert slide_ids == [f"s{i:02d}" for i in range(12)] and vectors.shape == (12, 16)
    np.testing.assert_allclose(vectors[3], load_slide_features(tmp_path / "s03.slide_features.h5").embedding)
    save_slide_features(
        tmp_path / "odd.slide_features.h5", np.ones(8), slide_encoder="other", patch_encoder="y"
    )
    with pytest.raises(ValueError, match=r"different lengths \[8, 16\].*other, x"):
        run_to_end(slide_embeddings(tmp_path))


def test_evaluate_on_slide_features_warns_of_empty_files_and_goes_on(tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    labels = _cohort(folder, empty=("blank",))
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        writer.writerows(labels.items())
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(folder),
            str(tmp_path / "labels.csv"),
            "--out",
            str(tmp_path / "r.json"),
            "--folds",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "napari-care: warning:" in result.stderr and "1 of 13 slide feature files are empty" in result.stderr
    )
    assert "blank" in result.stderr and "12 slides, 3 folds" in result.stdout
    assert (tmp_path / "r.json").is_file()
