"""Sample slides: the cached offline sample and the CMU-1-Small-Region download."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_care.core import samples
from napari_care.core.progress import run_to_end
from napari_care.core.samples import (
    CMU_SMALL_REGION_URL,
    OFFLINE_SAMPLE_SPEC,
    build_defaults,
    cmu_small_region_path,
    iter_offline_sample,
    load_sample_spec,
    spec_key,
)
from napari_care.core.synthetic.slides import load_synthetic_slide

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UNREACHABLE = "http://127.0.0.1:9/CMU-1-Small-Region.svs"  # the discard port: refused at once


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CARE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def small_spec(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"width": 1024, "height": 768, "swatch_px": 256, "seed": 3}))
    return path


def test_the_shipped_spec_is_the_builder_default():
    # An installed package without sample_data/ must build the very same sample.
    assert OFFLINE_SAMPLE_SPEC.is_file()
    assert load_sample_spec() == load_sample_spec(OFFLINE_SAMPLE_SPEC)
    shipped = load_sample_spec(OFFLINE_SAMPLE_SPEC)
    defaults = build_defaults()
    defaults["palette"] = {k: tuple(v) if isinstance(v, list) else v for k, v in defaults["palette"].items()}
    assert shipped == defaults
    assert shipped["width"] == 16384 and shipped["mpp"] == 0.5 and shipped["layout"] == "default"


def test_spec_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"widht": 10}))
    with pytest.raises(ValueError, match=r"bad\.json.*widht"):
        load_sample_spec(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_sample_spec(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_sample_spec(tmp_path / "missing.json")


def test_spec_key_follows_spec_and_generator(small_spec, monkeypatch):
    spec = load_sample_spec(small_spec)
    key = spec_key(spec)
    assert key == spec_key(load_sample_spec(small_spec))
    assert key != spec_key({**spec, "seed": 4})
    monkeypatch.setattr(samples, "GENERATOR_VERSION", "changed")
    assert spec_key(spec) != key


def test_offline_sample_is_built_once_into_the_cache(cache, small_spec):
    first = iter_offline_sample(spec_path=small_spec)
    reports = []
    while True:
        try:
            reports.append(next(first))
        except StopIteration as stop:
            path = stop.value
            break
    assert reports, "the first call builds"
    assert path.parent == cache / "samples" and path.name.endswith(".ome.tif")
    assert spec_key(load_sample_spec(small_spec)) in path.name
    built = load_synthetic_slide(path)
    assert (built.width, built.height, built.seed) == (1024, 768, 3)
    stamp = path.stat().st_mtime_ns

    again = iter_offline_sample(spec_path=small_spec)
    assert list(again) == []  # cached: no work, no progress
    assert run_to_end(iter_offline_sample(spec_path=small_spec)) == path
    assert path.stat().st_mtime_ns == stamp

    rebuilt = run_to_end(iter_offline_sample(spec_path=small_spec, rebuild=True))
    assert rebuilt == path and path.stat().st_mtime_ns != stamp
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_concurrent_callers_get_one_valid_sample(cache, small_spec):
    paths, errors = [], []

    def call():
        try:
            paths.append(run_to_end(iter_offline_sample(spec_path=small_spec)))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(paths)) == 1
    assert load_synthetic_slide(paths[0]).labels.shape == (48, 64)
    assert sorted(p.name for p in (cache / "samples").iterdir()) == sorted(
        [paths[0].name, paths[0].name.replace(".ome.tif", ".truth.npz")]
    )


def test_cache_folder_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv("NAPARI_CARE_CACHE", raising=False)
    import pooch

    assert samples.cache_dir() == Path(pooch.os_cache("napari_care"))


def test_cmu_download_without_network_says_what_to_do(cache):
    with pytest.raises(RuntimeError) as caught:
        cmu_small_region_path(url=UNREACHABLE)
    message = str(caught.value)
    assert "\n" not in message
    assert "connect to the internet" in message
    assert str(cache / "downloads" / "CMU-1-Small-Region.svs") in message


def test_cmu_cached_file_needs_no_network(cache):
    source = SHARED_DATA / "slides" / "CMU-1-Small-Region.svs"
    if not source.is_file():
        pytest.skip("shared test data absent")
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(source, cache / "downloads" / "CMU-1-Small-Region.svs")
    path = cmu_small_region_path(url=UNREACHABLE)  # checksum matches: no download tried
    assert path == cache / "downloads" / "CMU-1-Small-Region.svs"
    assert CMU_SMALL_REGION_URL.startswith("https://openslide.cs.cmu.edu/")


def test_cmu_corrupt_cached_file_is_not_trusted(cache):
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "CMU-1-Small-Region.svs").write_bytes(b"not a slide")
    with pytest.raises(RuntimeError, match="connect to the internet"):
        cmu_small_region_path(url=UNREACHABLE)


@pytest.mark.slow
def test_full_offline_sample(cache):
    path = samples.offline_sample_path()
    truth = load_synthetic_slide(path)
    assert truth.labels.shape == (768, 1024)
    assert set(np.unique(truth.labels)) == set(range(7))
    assert samples.offline_sample_path() == path
