"""The sensitivity benchmark's seed check and choice rule (benchmarks/bench_care_sensitivity.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if not (BENCHMARKS / "bench_care_sensitivity.py").is_file():
    pytest.skip("benchmarks/ is not beside the tests", allow_module_level=True)
sys.path.insert(0, str(BENCHMARKS))
import bench_care_sensitivity as sensitivity  # noqa: E402 (benchmarks/ is not a package)


def test_overlapping_seed_ranges_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        sensitivity.check_seed_ranges(range(300, 306), range(305, 320))


def test_fewer_than_five_test_slides_per_layout_are_refused():
    with pytest.raises(ValueError, match="at least 5"):
        sensitivity.check_seed_ranges(range(300, 306), range(400, 414))  # 14 seeds: bands gets 4


def test_the_default_ranges_pass_and_cover_every_layout():
    sensitivity.check_seed_ranges(sensitivity.DEV_SEEDS, sensitivity.TEST_SEEDS)
    layouts = [sensitivity.layout_of(i) for i in range(len(sensitivity.DEV_SEEDS))]
    assert sorted(set(layouts)) == sorted(sensitivity.LAYOUTS)
    assert sensitivity.parse_seeds("400-414") == range(400, 415)
    assert sensitivity.parse_seeds("7") == range(7, 8)


def test_a_clearly_better_value_is_chosen():
    assert sensitivity.choose_value({0: 0.80, 1: 0.82, 2: 0.83, 3: 0.85}, default=2) == 3


def test_a_tie_within_the_tolerance_keeps_the_default():
    assert sensitivity.choose_value({0: 0.80, 2: 0.830, 3: 0.834}, default=2) == 2
    assert sensitivity.choose_value({0: 0.80, 2: 0.830, 3: 0.836}, default=2) == 3


def test_a_default_outside_the_sweep_is_an_error():
    with pytest.raises(ValueError, match="not among"):
        sensitivity.choose_value({0: 0.8, 1: 0.9}, default=2)


def test_every_swept_value_has_a_setting_and_the_sweeps_hold_the_defaults():
    settings = sensitivity.settings()
    for name, values in sensitivity.SWEEPS.items():
        assert sensitivity.default_of(name) in values
        for value in values:
            config = settings[sensitivity.setting_key(name, value)]
            assert getattr(config, name) == value


def _rows(purity_of, gain_of) -> list[dict]:
    """Fabricated slides whose readouts depend on the setting only."""
    readouts = ("purity", "purity_gain_over_fixed", "boundary_recall", "coherence", "regions", "ari")
    rows = []
    for index in range(6):
        settings = {}
        for key in sensitivity.settings():
            values = dict.fromkeys(readouts, 0.5) | {
                "purity": purity_of(key),
                "purity_gain_over_fixed": gain_of(key),
            }
            settings[key] = values | {"roi_share": 0.1, "roi_purity": 0.9, "regions_as_default": True}
        rows.append({"layout": sensitivity.layout_of(index), "settings": settings})
    return rows


def test_k_is_chosen_by_its_gain_over_fixed_blocks_not_by_raw_purity():
    # smaller blocks are purer (k=4 best raw purity) but the adaptive gain peaks at the default
    rows = _rows(
        purity_of=lambda key: 0.95 if key == "k=4" else 0.85,
        gain_of=lambda key: 0.05 if key == "k=4" else (0.15 if key == "default" else 0.10),
    )
    chosen = sensitivity.choices(sensitivity.sweep_table(rows))
    assert chosen["k"]["readout"] == "purity_gain_over_fixed"
    assert chosen["k"]["chosen"] == chosen["k"]["default"] == 8
    assert chosen["refine_iterations"]["chosen"] == 2  # all other values tie with the default


def test_a_better_purity_moves_the_choice_of_that_constant_only():
    rows = _rows(purity_of=lambda key: 0.9 if key == "refine_iterations=4" else 0.85, gain_of=lambda key: 0.1)
    chosen = sensitivity.choices(sensitivity.sweep_table(rows))
    assert chosen["refine_iterations"]["chosen"] == 4
    assert all(
        chosen[name]["chosen"] == chosen[name]["default"] for name in chosen if name != "refine_iterations"
    )
