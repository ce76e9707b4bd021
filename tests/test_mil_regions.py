"""Region heads (train-mil --mem) applied to a slide as the viewer does: the same attention as training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from napari_care.core.jobs import SlideJob
from napari_care.core.mil.heads import REGION_ENCODER_FILE, load_mil_head, load_region_encoder
from napari_care.core.mil.regions import attention_of_patches, patch_output
from napari_care.core.mixmag_features import SUFFIX, mixmag_job
from napari_care.core.progress import run_to_end
from napari_care.core.segment import SegmentOptions
from napari_care.core.session import SegmentSession
from napari_care.core.slide.handle import open_slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTIONS = SegmentOptions(min_tissue=0.0)


def invoke(*args):
    from napari_care.cli.app import main

    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A generated slide, its mixed-magnification features as 6 labelled slides, MEM and a region head."""
    from napari_care.core.synthetic.slides import build_synthetic_slide

    root = tmp_path_factory.mktemp("regions")
    slide_path = root / "slide.ome.tif"
    build_synthetic_slide(slide_path, width=2688, height=1792, seed=1, swatch_px=256, tile_size=256)
    row = mixmag_job(SlideJob(slide_path, 0.5), root / "features", OPTIONS)
    assert row["status"] == "done", row
    features = root / "features" / f"slide{SUFFIX}"
    for index in range(6):
        shutil.copy(features, root / "features" / f"s{index}{SUFFIX}")
    features.unlink()
    (root / "labels.csv").write_text(
        "slide_id,label,split\n"
        + "".join(f"s{i},{i % 2},{['train', 'train', 'val', 'val', 'test', 'test'][i]}\n" for i in range(6))
    )
    invoke(
        "pretrain",
        "mixmag",
        root / "features",
        "--out",
        root / "mem",
        "--steps",
        2,
        "--batch-size",
        4,
        "--dim",
        32,
        "--readout",
        "cls+tile",
        "--quiet",
    )
    invoke(
        "train-mil",
        root / "labels.csv",
        root / "features",
        "--mem",
        root / "mem" / "mem_final.json",
        "--out",
        root / "mil",
        "--max-epochs",
        2,
        "--two-pools",
        "--quiet",
    )
    return root, slide_path


def test_train_mil_keeps_the_mixing_encoder_beside_the_head(trained):
    root, _ = trained
    head = load_mil_head(root / "mil")
    assert head.encoder == "mixmag" and (root / "mil" / f"{REGION_ENCODER_FILE}.json").is_file()
    region_encoder = head.region_encoder
    assert (region_encoder.patch_encoder, region_encoder.region_size_px, region_encoder.mpp) == (
        "default",
        896,
        0.5,
    )
    assert region_encoder.min_tissue == 0.0  # the extraction's tissue rule, recorded in the feature files
    assert (
        region_encoder.model.config.readout == "cls+tile" and region_encoder.model.instance_dim == head.in_dim
    )


def test_the_slide_gets_the_attention_it_got_in_training(trained):
    root, slide_path = trained
    head = load_mil_head(root / "mil")
    with open_slide(slide_path, mpp=0.5) as slide:  # the head's recorded min_tissue (0), not the widget's
        regions = run_to_end(SegmentSession(slide).attend_regions(SegmentOptions(min_tissue=0.9), head))
    with np.load(root / "mil" / "attention.npz") as saved:
        first = slice(saved["offsets"][0], saved["offsets"][1])  # every slide is a copy of this one
        np.testing.assert_allclose(regions.output.attention, saved["attention"][first], rtol=1e-4, atol=1e-6)
    assert (
        regions.n_regions == len(regions.instance_coords) == 6 and regions.instance_size_level0 == 896
    )  # 3 x 2
    assert regions.output.attention.sum() == pytest.approx(1.0, abs=1e-6)


def test_a_box_takes_the_regions_it_meets_and_patches_take_their_region(trained):
    root, slide_path = trained
    head = load_mil_head(root / "mil")
    with open_slide(slide_path, mpp=0.5) as slide:
        session = SegmentSession(slide)
        regions = run_to_end(session.attend_regions(OPTIONS, head, box=(100, 100, 1000, 500)))
        assert (
            run_to_end(session.attend_regions(OPTIONS, head, box=(5000, 0, 6000, 100))) is None
        )  # past the edge
    assert sorted(map(tuple, regions.instance_coords.tolist())) == [(0, 0), (896, 0)]
    assert regions.output.attention.sum() == pytest.approx(1.0, abs=1e-6)
    patches = np.array([[0, 0], [672, 672], [900, 0], [1800, 0]])  # 224 px patches; the last outside the box
    output = patch_output(regions, patches, 224.0)
    weight = dict(zip(map(tuple, regions.instance_coords.tolist()), regions.output.attention, strict=True))
    np.testing.assert_array_equal(output.attention[:3], [weight[0, 0], weight[0, 0], weight[896, 0]])
    assert np.isnan(output.attention[3]) and output.predicted == regions.output.predicted


def test_patches_map_to_the_region_under_their_centre():
    region_coords = np.array([[0, 0], [896, 0], [896, 896]])
    patches = np.array([[0, 0], [880, 0], [890, 890], [-300, 0], [0, 896], [1792, 1792]])
    attention = attention_of_patches(patches, 32.0, region_coords, 896.0, np.array([0.2, 0.3, 0.5]))
    np.testing.assert_array_equal(attention[:3], np.float32([0.2, 0.3, 0.5]))  # centres 16, 896, 906
    assert np.isnan(attention[3:]).all()  # left of the slide, a region not kept, past the last region
    assert np.isnan(attention_of_patches(patches, 32.0, np.zeros((0, 2)), 896.0, np.zeros(0))).all()
    with pytest.raises(ValueError, match="2 attention values for 3 squares"):
        attention_of_patches(patches, 32.0, region_coords, 896.0, np.array([0.5, 0.5]))


def test_a_region_head_without_its_encoder_is_refused_by_name(trained, tmp_path):
    root, slide_path = trained
    copy = tmp_path / "mil"
    shutil.copytree(root / "mil", copy)
    for file in copy.glob(f"{REGION_ENCODER_FILE}.*"):
        file.unlink()
    head = load_mil_head(copy)
    assert head.encoder == "mixmag" and head.region_encoder is None
    with (
        open_slide(slide_path, mpp=0.5) as slide,
        pytest.raises(ValueError, match=r"mixing encoder .* is missing"),
    ):
        run_to_end(SegmentSession(slide).attend_regions(OPTIONS, head))
    with pytest.raises(ValueError, match="not a region encoder"):
        load_region_encoder(root / "mem" / "mem_final.json")  # a MEM training checkpoint is not one
    with pytest.raises(FileNotFoundError, match="mixing encoder of this region head is missing"):
        load_region_encoder(copy)


def test_a_tokens_head_weighs_each_20x_tile(trained, tmp_path):
    from napari_care.core.mixmag_features import load_mixmag

    root, slide_path = trained
    invoke(
        "pretrain",
        "mixmag",
        root / "features",
        "--out",
        tmp_path / "mem",
        "--steps",
        1,
        "--batch-size",
        4,
        "--dim",
        32,
        "--readout",
        "tokens",
        "--quiet",
    )
    invoke(
        "train-mil",
        root / "labels.csv",
        root / "features",
        "--mem",
        tmp_path / "mem" / "mem_final.json",
        "--out",
        tmp_path / "mil",
        "--max-epochs",
        2,
        "--quiet",
    )
    head = load_mil_head(tmp_path / "mil")
    with open_slide(slide_path, mpp=0.5) as slide:
        tiles = run_to_end(SegmentSession(slide).attend_regions(OPTIONS, head))
    with np.load(tmp_path / "mil" / "attention.npz") as saved:
        first = slice(saved["offsets"][0], saved["offsets"][1])
        np.testing.assert_allclose(tiles.output.attention, saved["attention"][first], rtol=1e-4, atol=1e-6)
    assert tiles.n_regions == 6 and tiles.instance_size_level0 == 224
    features = load_mixmag(
        root / "features" / f"s0{SUFFIX}"
    )  # instances are the present 20x tiles, in slot order
    order = np.argsort(features.region_of_tile[2] * 16 + features.position_in_region[2])
    np.testing.assert_array_equal(tiles.instance_coords, features.levels[2].coords[order])
    output = patch_output(tiles, tiles.instance_coords, 224.0)  # 20x patches on the tiles: each gets its own
    np.testing.assert_array_equal(output.attention, tiles.output.attention)


def test_retraining_from_npz_tokens_removes_the_older_encoder(trained, tmp_path):
    from napari_care.core.mixmag_features import load_mixmag

    root, _ = trained
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()
    for file in sorted((root / "features").glob(f"*{SUFFIX}")):
        tokens = load_mixmag(file).to_region_tokens()
        np.savez(
            tokens_dir / f"{file.name.removesuffix(SUFFIX)}.npz",
            tokens=tokens.tokens,
            token_present=tokens.token_present,
        )
    out = tmp_path / "mil"
    shutil.copytree(root / "mil", out)
    result = invoke(
        "train-mil",
        root / "labels.csv",
        tokens_dir,
        "--mem",
        root / "mem" / "mem_final.json",
        "--out",
        out,
        "--max-epochs",
        1,
        "--quiet",
    )
    assert "viewer cannot apply this head" in result.output
    assert not list(out.glob(f"{REGION_ENCODER_FILE}.*")) and load_mil_head(out).region_encoder is None
