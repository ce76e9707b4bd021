"""Tissue detection: share of each planted type's tiles found, and its time against LazySlide's.

    python benchmarks/bench_tissue.py [--seeds 200-204] [--size 8192x6144] [--repeat 5]
                                      [--gigapixel SVS | --no-gigapixel] [--lazyslide-python PY]

On generated slides (test seeds, disjoint from the development seeds 100-101 the thresholds
were chosen on; pen marks on) every tile of the tiling's grid (224 px at 0.5 um/px) gets its
majority planted type from the truth map, and a tile counts as found when ``tissue_mask``
covers at least the tiling's ``min_tissue`` share of it. Per type: the share of its tiles
found, mean and sd over seeds, for the mask as it is (texture cue) and as it was
(``texture_threshold=None``), and for LazySlide's ``find_tissues`` (its polygons rasterised
onto our mask's grid). Glass tiles are split into glass under a pen stroke (the stroke covers
> 2% of the tile) and the rest, each also counted on tiles with no tissue at all under them
(glass tiles by majority include the edges of tissue); the generator paints its dust specks
into glass, so "glass kept" includes dust.

Time: a freshly opened slide to its mask, ``--repeat`` times, median. LazySlide reads the
generated OME-TIFFs' pyramid as one level (its level 0, tens of seconds), so there it runs
``--lazyslide-repeat`` times (default once, for its mask); the timing that compares like with
like is the gigapixel SVS, whose levels both read. LazySlide runs in its
own venv (``--lazyslide-python``) in one subprocess per slide, which times its own
``open_wsi`` + ``find_tissues`` the same way (imports are not timed in either). The level
each works on is recorded. The OS page cache is warm for both. Also runs on the gigapixel
slide of ``make_gigapixel.py`` when it exists (its truth map has one label per 64 px cell).
Writes ``docs/results/tissue.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.slides import (
    TISSUE_TYPES,
    build_synthetic_slide,
    load_synthetic_slide,
    pen_mark_field,
)
from napari_care.core.tiling import tile_grid
from napari_care.core.tissue import TissueMask, tissue_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_files import RESULTS, write_result

RESULT = RESULTS / "tissue.json"
BENCH_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "napari_care_bench"
DEFAULT_GIGAPIXEL = BENCH_DIR / "gigapixel_100000x80000_seed0.svs"
DEFAULT_LAZYSLIDE = Path("/tmp/lazyslide-venv/bin/python")
MIN_TISSUE = 0.25  # tile_grid's default: a tile is kept when a quarter of it is tissue
PEN_TILE_SHARE = 0.02  # a glass tile with more pen stroke than this is a pen tile

# Run by LazySlide's own interpreter: argv = slide, repeats, mask downsample, mask h, mask w, out.npz
LAZYSLIDE_SCRIPT = r"""
import json, sys, time
import numpy as np
import cv2
import lazyslide as zs
from wsidata import open_wsi
from lazyslide.preprocess._tissue import _decide_level

path, out = sys.argv[1], sys.argv[6]
repeats, ds, h, w = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
times = []
for _ in range(repeats):
    start = time.perf_counter()
    wsi = open_wsi(path)
    zs.pp.find_tissues(wsi)
    times.append(time.perf_counter() - start)
level = int(_decide_level(wsi, "auto", 0.8, True))
mask = np.zeros((h, w), np.uint8)
for poly in wsi.shapes["tissues"].geometry:
    ring = lambda r: np.rint(np.asarray(r.coords) / ds).astype(np.int32)
    cv2.fillPoly(mask, [ring(poly.exterior)], 1)
    for hole in poly.interiors:
        cv2.fillPoly(mask, [ring(hole)], 0)
np.savez_compressed(out, mask=mask.astype(bool))
props = wsi.properties
print(json.dumps({"times_s": times, "level": level, "level_downsample": float(props.level_downsample[level]),
                  "levels_seen": len(props.level_downsample), "reader": type(wsi.reader).__name__,
                  "level_shape": list(props.level_shape[level])}))
"""


def mask_level(slide, mask: TissueMask) -> dict:
    """Which pyramid level ``tissue_mask`` read and the view it made of it."""
    level = slide.get_best_level_for_downsample(mask.downsample)
    return {
        "level": int(level),
        "level_downsample": float(slide.level_downsamples[level]),
        "mask_downsample": mask.downsample,
        "mask_shape": list(mask.mask.shape),
    }


def time_ours(path: Path, repeats: int) -> tuple[list[float], TissueMask, dict]:
    """``repeats`` timings of open + tissue_mask on a fresh slide each time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        slide = open_slide(path)
        mask = tissue_mask(slide)
        times.append(time.perf_counter() - start)
    return times, mask, mask_level(slide, mask)


def run_lazyslide(python: Path, path: Path, repeats: int, like: TissueMask) -> tuple[dict, TissueMask] | None:
    """LazySlide's timings and its mask rasterised onto ``like``'s grid; None when it is absent."""
    if not python.is_file():
        return None
    with tempfile.TemporaryDirectory() as scratch:
        script, out = Path(scratch) / "lazyslide_tissue.py", Path(scratch) / "mask.npz"
        script.write_text(LAZYSLIDE_SCRIPT, encoding="utf-8")
        h, w = like.mask.shape
        args = [str(v) for v in (python, script, path, repeats, like.downsample, h, w, out)]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:]
            print(f"LazySlide failed on {path.name}: {last}", file=sys.stderr)
            return None
        info = json.loads(done.stdout.strip().splitlines()[-1])
        with np.load(out) as npz:
            return info, TissueMask(npz["mask"], like.downsample)


def found_shares(truth, coords, size, masks: dict[str, TissueMask], pen_share: np.ndarray | None) -> dict:
    """Per planted type (and pen / other glass) the share of its tiles each mask finds."""
    fractions = truth.truth_fractions(coords, size)
    majority = fractions.argmax(axis=1)
    bare = fractions[:, 0] >= 1.0  # not a truth cell of tissue under the tile
    groups = {name: majority == k for k, name in enumerate(TISSUE_TYPES) if k > 0}
    no_pen = np.ones(len(coords), bool) if pen_share is None else pen_share <= PEN_TILE_SHARE
    if pen_share is not None:
        groups["pen (glass under a stroke)"] = (majority == 0) & ~no_pen
        groups["pen, no tissue in tile"] = bare & ~no_pen
    groups["glass (with dust, no pen)"] = (majority == 0) & no_pen
    groups["glass, no tissue in tile"] = bare & no_pen
    shares: dict = {"tiles": {name: int(sel.sum()) for name, sel in groups.items()}}
    for label, mask in masks.items():
        found = mask.fraction_for_tiles(coords, size) >= MIN_TISSUE
        shares[label] = {name: float(found[s].mean()) if s.any() else None for name, s in groups.items()}
    return shares


def summarise(per_slide: list[dict]) -> dict:
    """Mean and sd over slides of every share."""
    labels = [k for k in per_slide[0] if k != "tiles"]
    summary = {}
    for label in labels:
        summary[label] = {}
        for name in per_slide[0][label]:
            values = [s[label][name] for s in per_slide if s[label][name] is not None]
            summary[label][name] = {
                "mean": round(statistics.fmean(values), 4) if values else None,
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "slides": len(values),
            }
    return summary


def median_s(times: list[float]) -> float:
    return round(statistics.median(times), 4)


def bench_slide(
    path: Path, truth, repeats: int, lazyslide: Path, pen_share_for, lazyslide_repeats: int
) -> dict:
    """Shares found and timings on one slide."""
    times, ours, our_level = time_ours(path, repeats)
    slide = open_slide(path)
    before = tissue_mask(slide, texture_threshold=None)
    grid = tile_grid(slide, min_tissue=0)
    coords, size = grid.coords, grid.tile_size_level0
    masks = {"ours": ours, "ours_before (texture_threshold=None)": before}
    lazy = run_lazyslide(lazyslide, path, lazyslide_repeats, ours)
    if lazy is not None:
        masks["lazyslide"] = lazy[1]
    record = {
        "slide": path.name,
        "tile_size_level0": float(size),
        "shares": found_shares(truth, coords, size, masks, pen_share_for(grid)),
        "mask_fraction": {label: round(float(m.mask.mean()), 4) for label, m in masks.items()},
        "ours": {"times_s": [round(t, 4) for t in times], "median_s": median_s(times), **our_level},
    }
    if lazy is not None:
        info = lazy[0]
        record["lazyslide"] = info | {"times_s": [round(t, 4) for t in info["times_s"]]}
        record["lazyslide"]["median_s"] = median_s(info["times_s"])
    theirs = record.get("lazyslide", {})
    print(
        f"{path.name}: ours {record['ours']['median_s']} s (level {our_level['level']}, "
        f"mask ds {our_level['mask_downsample']}), LazySlide "
        f"{theirs.get('median_s')} s (level {theirs.get('level')}); "
        f"found: {json.dumps(record['shares']['ours'])}",
        flush=True,
    )
    return record


def no_pen_marks(grid) -> None:
    """The gigapixel slide has no pen marks."""
    return None


DEV_SEEDS = [100, 101]
DEV_SWEEP = {
    "texture_threshold": (1.0, 1.5, 2.0, 3.0, 4.0),
    "texture_open_um": (0.0, 8.0, 16.0, 24.0, 32.0),
}
DEV_RULE = (
    "per setting, one at a time (the other at its default): the largest opening, then the "
    "highest threshold, whose fat share stays >= 0.98 on every development slide (fewer "
    "glass tiles kept without losing fat)"
)


def generated_slide(name: str, seed: int, width: int, height: int) -> tuple[Path, object, TissueMask]:
    """A generated slide with pen marks (built once into the bench folder), its truth and its pen strokes."""
    path = BENCH_DIR / "tissue" / f"{name}_{width}x{height}.ome.tif"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_synthetic_slide(path, width=width, height=height, seed=seed, pen_marks=True, workers=1)
    truth = load_synthetic_slide(path)
    pen = TissueMask(pen_mark_field(truth.labels, np.random.default_rng([seed, 2])) > 0, truth.downsample)
    return path, truth, pen


def development_phase(width: int, height: int, out: Path) -> None:
    """The sweep the texture cue's settings were chosen on (development seeds only)."""
    from napari_care.core.tissue import TEXTURE_OPEN_UM, TEXTURE_SD_THRESHOLD

    defaults = {"texture_threshold": TEXTURE_SD_THRESHOLD, "texture_open_um": TEXTURE_OPEN_UM}
    rows = []
    for seed in DEV_SEEDS:
        path, truth, pen = generated_slide(f"dev_seed{seed}", seed, width, height)
        slide = open_slide(path)
        grid = tile_grid(slide, min_tissue=0)
        pen_share = pen.fraction_for_tiles(grid.coords, grid.tile_size_level0)
        masks = {}
        for name, values in DEV_SWEEP.items():
            for value in values:
                options = defaults | {name: value}
                masks[f"{name}={value:g}"] = tissue_mask(slide, **options)
        shares = found_shares(truth, grid.coords, grid.tile_size_level0, masks, pen_share)
        rows.append({"seed": seed, "shares": shares})
        print(
            f"dev seed {seed}: fat found "
            + ", ".join(f"{k} {v['fat']:.3f}" for k, v in shares.items() if k != "tiles")
        )
    chosen = {}
    for name, values in DEV_SWEEP.items():
        keep = [v for v in values if all(r["shares"][f"{name}={v:g}"]["fat"] >= 0.98 for r in rows)]
        chosen[name] = max(keep) if keep else None
    figures = {
        "development_seeds": DEV_SEEDS,
        "slide_size": [width, height],
        "sweep": {name: list(values) for name, values in DEV_SWEEP.items()},
        "defaults_in_code": defaults,
        "rule": DEV_RULE,
        "chosen_by_rule": chosen,
        "summary": summarise([r["shares"] for r in rows]),
        "slides": rows,
    }
    print("chosen by the rule:", chosen, "(in the code:", defaults, ")")
    print(write_result(out, "tissue_development", figures))


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="200-204", help="test seeds (dev seeds 100-101 are excluded)")
    parser.add_argument("--size", default="8192x6144", help="generated slide WIDTHxHEIGHT (level-0 px)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gigapixel", type=Path, default=DEFAULT_GIGAPIXEL)
    parser.add_argument("--no-gigapixel", action="store_true")
    parser.add_argument("--lazyslide-python", type=Path, default=DEFAULT_LAZYSLIDE)
    parser.add_argument(
        "--lazyslide-repeat",
        type=int,
        default=1,
        help="LazySlide's repeats on the generated OME-TIFFs, where it sees one level (the "
        "gigapixel SVS gets --repeat)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--phase",
        choices=("test", "dev"),
        default="test",
        help="dev: the sweep on seeds 100-101 the settings were chosen on (tissue_development.json)",
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.phase == "dev":
        development_phase(width, height, args.out or RESULTS / "tissue_development.json")
        return
    args.out = args.out or RESULT
    seeds = parse_seeds(args.seeds)
    if set(seeds) & set(DEV_SEEDS):
        parser.error("seeds 100-101 are the development seeds the thresholds were chosen on")
    load_start = list(os.getloadavg())

    generated = []
    for seed in seeds:
        path, truth, pen = generated_slide(f"seed{seed}", seed, width, height)

        def pen_share_for(grid, pen=pen):
            return pen.fraction_for_tiles(grid.coords, grid.tile_size_level0)

        record = bench_slide(
            path, truth, args.repeat, args.lazyslide_python, pen_share_for, args.lazyslide_repeat
        )
        generated.append(record | {"seed": seed})

    figures = {
        "seeds": seeds,
        "development_seeds": DEV_SEEDS,
        "slide_size": [width, height],
        "mpp": 0.5,
        "repeat": args.repeat,
        "lazyslide_repeat_generated": args.lazyslide_repeat,
        "min_tissue": MIN_TISSUE,
        "load_average_at_start": load_start,
        "generated_summary": summarise([r["shares"] for r in generated]),
        "generated_time_median_s": {
            "ours": median_s([r["ours"]["median_s"] for r in generated]),
            "lazyslide": median_s([r["lazyslide"]["median_s"] for r in generated])
            if all("lazyslide" in r for r in generated)
            else None,
        },
        "generated": generated,
    }
    if not args.no_gigapixel and args.gigapixel.is_file():
        truth = load_synthetic_slide(args.gigapixel.with_suffix(".truth.npz"))  # make_gigapixel's name
        figures["gigapixel"] = bench_slide(
            args.gigapixel, truth, args.repeat, args.lazyslide_python, no_pen_marks, args.repeat
        )
    figures["load_average_at_end_of_timings"] = list(os.getloadavg())
    print(write_result(args.out, "tissue", figures))


if __name__ == "__main__":
    main()
