"""bench_peers.py's pieces that decide what is compared: the tile subsets, the shipped encoder, cosines."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
psutil = pytest.importorskip("psutil")  # bench_peers needs it
import bench_peers  # noqa: E402 (benchmarks/ is not a package)
from bench_peers_common import RUN_TILES, spread_rows  # noqa: E402


@pytest.mark.parametrize(("n_total", "n_wanted"), [(31917, 5000), (31917, 1024), (1000, 999), (2000, 256)])
def test_spread_rows_picks_runs_of_neighbours_over_the_whole_list(n_total, n_wanted):
    rows = spread_rows(n_total, n_wanted)
    assert len(rows) == n_wanted
    assert np.all(np.diff(rows) > 0) and rows[0] == 0 and rows[-1] <= n_total - 1
    assert rows[-1] >= n_total - RUN_TILES  # reaches the end of the list
    neighbours = np.mean(np.diff(rows) == 1)
    assert neighbours > 0.9  # mostly runs of neighbouring tiles, not a stride


@pytest.mark.parametrize("n_wanted", [0, 500, 600])
def test_spread_rows_takes_every_row_when_asked_for_all(n_wanted):
    assert np.array_equal(spread_rows(500, n_wanted), np.arange(500))


def test_shipped_descriptor_is_napari_cares_bit_for_bit(tmp_path):
    ship = bench_peers.ship_descriptor(tmp_path / "ship")
    assert sorted(p.name for p in (ship / bench_peers.SHIPPED_PACKAGE).glob("*.py")) == sorted(
        [*bench_peers.DESCRIPTOR_FILES, "registry.py", "__init__.py"]
    )
    tiles = np.random.default_rng(0).integers(0, 256, size=(8, 224, 224, 3), dtype=np.uint8)
    tiles[:4] = np.clip(tiles[:4].astype(int) // 3 + 150, 0, 255).astype(np.uint8)  # pale, tissue-like
    assert bench_peers.shipped_matches(ship, tiles) == 0.0


def test_shipped_descriptor_does_not_import_napari_care(tmp_path):
    import subprocess

    ship = bench_peers.ship_descriptor(tmp_path / "ship")
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from napari_care_descriptor.descriptor import DescriptorEncoder;"
        "print(DescriptorEncoder().encode(np.full((2, 224, 224, 3), 200, np.uint8)).shape[1]);"
        "print(any(m.startswith('napari_care.') or m == 'napari_care' for m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ship)], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    width, imported = done.stdout.split()
    assert int(width) == bench_peers.create_encoder("default").embed_dim
    assert imported == "False"


def test_cosines_of_equal_opposite_and_orthogonal_rows():
    ours = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    theirs = np.array([[2.0, 0.0], [0.0, -1.0], [-3.0, 3.0]])
    figures = bench_peers.cosines(ours, theirs)
    assert figures["mean"] == pytest.approx(0.0)
    assert figures["min"] == pytest.approx(-1.0)
    assert bench_peers.cosines(ours, ours * 5)["min"] == pytest.approx(1.0)
