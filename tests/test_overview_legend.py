"""The PNG overview carries a legend of the phenotype groups."""

from __future__ import annotations

import numpy as np

from napari_care.core.overview import legend, render_overview
from napari_care.core.progress import run_to_end
from napari_care.core.qupath.objects import group_color
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide


def test_the_overview_has_one_swatch_per_group_below_the_panels(widget_slide_path):
    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=3)))
        image = render_overview(result, slide, max_size=400, names={0: "tumour"})
        thumb = slide.thumbnail(400)
    strip = legend(result, image.shape[1])
    assert image.shape[0] == thumb.shape[0] + strip.shape[0]
    key = image[thumb.shape[0] :]
    for group in range(int(result.group_of_region.max()) + 1):
        assert (key == np.array(group_color(group), np.uint8)).all(axis=-1).sum() >= 100  # a swatch
    assert (key < 60).all(axis=-1).sum() > 50  # the names' text


def test_segment_overview_writes_the_png_in_the_output_set(widget_slide_path, tmp_path):
    from click.testing import CliRunner

    from napari_care.cli.app import main

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["segment", str(widget_slide_path), "--out", str(out), "--overview", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "small.overview.png").stat().st_size > 1000
    again = CliRunner().invoke(main, ["segment", str(widget_slide_path), "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "skipped" in again.output  # a set with an overview still resumes
