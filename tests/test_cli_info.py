"""``napari-care info``: JSON metadata on stdout; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from napari_care.cli.app import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_info_on_the_real_svs(runner, shared_slide):
    result = runner.invoke(main, ["info", str(shared_slide("CMU-1-Small-Region.svs"))])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mpp"] == [0.499, 0.499]
    assert info["mpp_source"] == "aperio"
    assert info["objective_power"] == 20
    assert info["vendor"] == "aperio"
    assert info["file_level_count"] == 1 and info["level_count"] == 3
    assert info["dimensions"][0] == [2220, 2967]
    assert info["level_downsamples"] == [1.0, 2.0, 4.0]
    assert info["associated_images"] == ["label", "macro", "thumbnail"]
    assert result.stderr == ""


def test_info_without_mpp_prints_null(runner, shared_slide):
    result = runner.invoke(main, ["info", str(shared_slide("TCGA-CR-7395-01A-01-TS1.svs"))])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["mpp"] is None and info["mpp_source"] is None
    assert info["file_level_count"] == 2


def test_info_mpp_option_overrides(runner, make_pyramid):
    path = make_pyramid(resolution=(40000, "centimeter")).path
    info = json.loads(runner.invoke(main, ["info", str(path), "--mpp", "0.5"]).stdout)
    assert info["mpp"] == [0.5, 0.5] and info["mpp_source"] == "user"
    assert info["tile_sizes"][0] == [160, 96]
    bad = runner.invoke(main, ["info", str(path), "--mpp", "-1"])
    assert bad.exit_code == 2 and "mpp" in bad.stderr


def test_info_on_broken_svs(runner, shared_slide):
    result = runner.invoke(main, ["info", str(shared_slide("broken.svs"))])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.svs" in lines[0]


def test_info_on_a_missing_file(runner, tmp_path):
    result = runner.invoke(main, ["info", str(tmp_path / "nowhere.svs")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere.svs" in lines[0]
