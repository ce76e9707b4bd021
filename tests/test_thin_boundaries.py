"""The core functions the command line and the widget call instead of doing the work
themselves, and the defaults both read from the core."""

from __future__ import annotations

from dataclasses import dataclass

import click
import numpy as np
import pytest

from napari_care.cli.app import main
from napari_care.cli.common import CoreDefault
from napari_care.core.cohort import cohort_workers
from napari_care.core.embedding_files import (
    labelled_embeddings,
    load_embeddings,
    save_embeddings,
    slide_embeddings,
)
from napari_care.core.models.care_blocks import DEFAULT_K
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.segment import OPTION_RANGES, SegmentOptions
from napari_care.core.stage_clock import StageClock
from napari_care.core.train.bags import replace_region_encoder
from napari_care.core.train.schedule import with_short_warmup


def test_the_segment_commands_default_to_the_segment_options():
    defaults = SegmentOptions().to_dict()
    assert defaults["k"] == DEFAULT_K
    for name in ("segment", "extract", "demo"):
        command = main.commands[name]
        shown = {
            param.name: param.get_default(click.Context(command))
            for param in command.params
            if isinstance(param, CoreDefault) and param.name in defaults
        }
        assert shown and shown == {name: defaults[name] for name in shown}, name


def test_every_ranged_option_starts_inside_its_range():
    options = SegmentOptions()
    for name, (low, high) in OPTION_RANGES.items():
        value = getattr(options, name)
        assert value is None or value == "auto" or low <= value <= high, (
            name
        )  # "auto": groups chosen per slide


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_clock_counts_the_pace_from_the_first_report():
    clock = FakeClock()
    stages = StageClock(clock)
    first = Progress("extract", 40, 100, "40 tiles from the cache")
    stages.saw(first)
    assert stages.status_line(first) == "40 tiles from the cache"  # no pace yet
    clock.now += 10.0
    later = Progress("extract", 60, 100)
    stages.saw(later)  # not the first: the clock keeps its start
    assert stages.seconds_left(later) == pytest.approx(20.0)  # 20 tiles in 10 s, 40 left
    assert stages.status_line(later) == "extract: 60/100, about 20 s left"
    assert stages.status_line(Progress("extract", 100, 100, "done")) == "done"
    stages.reset()
    assert stages.seconds_left(later) is None


@pytest.mark.parametrize(
    ("n_slides", "workers", "scheduler", "expected"),
    [
        (1, None, None, 0),  # one slide runs in this process
        (5, 0, None, 0),
        (5, 2, None, 2),
        (2, 8, None, 2),  # at most one worker per slide
        (1, 3, None, 1),
        (5, None, "tcp://host:8786", None),
    ],
)
def test_cohort_workers(n_slides, workers, scheduler, expected):
    assert cohort_workers(n_slides, workers=workers, scheduler=scheduler) == expected


def test_cohort_workers_default_to_one_per_two_cores(monkeypatch):
    monkeypatch.setattr("napari_care.core.cohort.default_workers", lambda: 3)
    assert cohort_workers(10) == 3


@dataclass(frozen=True)
class TinyConfig:
    steps: int = 1000
    warmup_steps: int = 50
    lr: float = 1e-4


def test_a_short_run_has_a_short_warmup():
    assert with_short_warmup(TinyConfig, steps=2000).warmup_steps == 50
    assert with_short_warmup(TinyConfig, steps=30, lr=1.0) == TinyConfig(steps=30, warmup_steps=3, lr=1.0)
    assert with_short_warmup(TinyConfig).warmup_steps == 50


def test_embeddings_round_trip_and_meet_their_labels(tmp_path):
    vectors = np.arange(6, dtype=np.float64).reshape(3, 2)
    saved = save_embeddings(tmp_path / "e.npz", ["a", "b", "c"], vectors)
    slide_ids, loaded = load_embeddings(saved)
    assert slide_ids == ["a", "b", "c"] and np.array_equal(loaded, vectors)
    reports = []
    assert run_to_end(slide_embeddings(saved), reports.append)[0] == slide_ids and reports == []
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\nc,x\nzz,y\na,y\n")
    x, y, used = labelled_embeddings(slide_ids, loaded, labels, "classification")
    assert used == ["c", "a"] and y.tolist() == ["x", "y"] and np.array_equal(x, vectors[[2, 0]])
    survival = tmp_path / "survival.csv"
    survival.write_text("slide_id,time,event\nb,3.5,1\na,soon,0\n")
    with pytest.raises(ValueError, match="must be numbers"):
        labelled_embeddings(slide_ids, loaded, survival, "survival")
    table = tmp_path / "e.csv"
    table.write_text("name,slide_id,v\n1,a,2\n")
    assert load_embeddings(table) == (["a"], pytest.approx(np.array([[1.0, 2.0]])))
    with pytest.raises(ValueError, match=r"must be an \.npz"):
        load_embeddings(tmp_path / "labels.txt")


def test_replacing_the_region_encoder_removes_an_older_one(tmp_path):
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"mem_encoder{suffix}").write_text("old")
    (tmp_path / "abmil.json").write_text("{}")
    assert replace_region_encoder(tmp_path, None) is None
    assert [path.name for path in tmp_path.iterdir()] == ["abmil.json"]
