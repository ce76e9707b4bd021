"""The fault cases of broken inputs: slides that are no slides or cut short, feature files, GeoJSON,
checkpoints and corrupt JPEG tiles (registered in :data:`fault_lab.CASES`; run by ``fault_cases.py``)."""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_lab, beside this script

from fault_lab import (
    FILE_TILE_PX,
    SLIDE_SIZE_PX,
    Lab,
    Row,
    Run,
    case,
    files_note,
    judge,
    not_here,
    row,
    segment,
    summary_detail,
    unique_problems,
)

# -- slides that cannot be read ------------------------------------------------------------------


def unreadable_slide(lab: Lab, slide: Path, problem: tuple[str, ...]) -> Row:
    """A slide file that is no slide: a failed row naming the file and the problem (exit 1)."""
    out = lab.path(f"{slide.parent.name}/out")
    run = segment(lab, slide, out)
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(1, 2), mentions=[slide.name], folder=out)
    said = (detail + run.stderr).replace(str(slide), "<slide>")  # the problem, not the file's name
    problems = unique_problems(problems + judge(run, exit_codes=(1, 2), mentions=[problem], where=said))
    return row(lab, run, problems, files_note(out, slide_files=slide.name.split(".")[0]), detail)


@case("zero-byte", "a zero-byte .svs")
def zero_byte(lab: Lab) -> Row:
    slide = lab.path("zero/empty.svs")
    slide.write_bytes(b"")
    return unreadable_slide(lab, slide, ("empty", "0 bytes", "cannot read this file as a slide"))


@case("renamed-txt", "a text file renamed to .svs")
def renamed_text(lab: Lab) -> Row:
    slide = lab.path("renamed/notes.svs")
    slide.write_text("meeting notes, not a slide\n" * 50)
    return unreadable_slide(lab, slide, ("not a tiff", "cannot read this file as a slide"))


@case("broken-svs", "the shared broken.svs (1,001 bytes, not a TIFF)")
def broken_svs(lab: Lab) -> Row:
    shared = lab.shared("slides/broken.svs")
    if shared is None:
        return not_here("no ../shared/data/slides/broken.svs")
    slide = lab.path("brokensvs/broken.svs")
    slide.write_bytes(shared.read_bytes())
    return unreadable_slide(lab, slide, ("not a tiff", "cannot read this file as a slide"))


def truncated(lab: Lab, source: Path | None, share: float, name: str) -> Row:
    """``source`` cut at ``share`` of its bytes: it says "truncated" (once), no traceback."""
    if source is None:
        return not_here("no ../shared/data/slides/CMU-1-Small-Region.svs")
    slide = lab.path(f"{name}/{name}{''.join(source.suffixes[-2:]) if source.suffix == '.tif' else '.svs'}")
    data = source.read_bytes()
    slide.write_bytes(data[: int(len(data) * share)])
    out = lab.path(f"{name}/out")
    run = segment(lab, slide, out)
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(0, 1), mentions=[slide.name, "truncated"], folder=out)
    count = run.output.lower().count("truncated")
    if count > 2:  # the warning and the row may both say it; more is noise
        problems.append(f"'truncated' said {count} times")
    note = f"{detail}; 'truncated' appears {count}x"
    return row(lab, run, problems, files_note(out, slide_files=name), note)


@case("truncated-svs-50", "CMU-1-Small-Region.svs cut at 50%")
def truncated_svs_50(lab: Lab) -> Row:
    return truncated(lab, lab.shared("slides/CMU-1-Small-Region.svs"), 0.5, "cut50svs")


@case("truncated-svs-90", "CMU-1-Small-Region.svs cut at 90%")
def truncated_svs_90(lab: Lab) -> Row:
    return truncated(lab, lab.shared("slides/CMU-1-Small-Region.svs"), 0.9, "cut90svs")


@case("truncated-tif-50", "the generated OME-TIFF cut at 50%")
def truncated_tif_50(lab: Lab) -> Row:
    return truncated(lab, lab.slide(), 0.5, "cut50tif")


@case("truncated-tif-90", "the generated OME-TIFF cut at 90%")
def truncated_tif_90(lab: Lab) -> Row:
    return truncated(lab, lab.slide(), 0.9, "cut90tif")


@case("missing-path", "a slide path that does not exist")
def missing_path(lab: Lab) -> Row:
    out = lab.root / "missing" / "out"
    run = segment(lab, lab.root / "missing" / "nowhere.svs", out)
    problems = judge(run, exit_codes=(2,), mentions=["nowhere.svs"], where=run.stderr, absent=[out])
    return row(lab, run, problems, files_note(out))


@case("directory-as-slide", "a folder given as the slide")
def directory_as_slide(lab: Lab) -> Row:
    folder = lab.path("adir/slides.svs")
    folder.mkdir()
    out = lab.root / "adir" / "out"
    run = segment(lab, folder, out)
    problems = judge(run, exit_codes=(2,), mentions=["slides.svs", "folder"], where=run.stderr, absent=[out])
    return row(lab, run, problems, files_note(out))


@case("unicode-path", "a slide in a folder and with a name of accents, CJK and spaces")
def unicode_path(lab: Lab) -> Row:
    slide = lab.slide_copy("ünïcødé 日本/スライド é.ome.tif")
    out = lab.path("ünïcødé 日本/出力 ø")
    run = segment(lab, slide, out)
    summary = out / "スライド é.care.json"
    problems = judge(run, exit_codes=(0,), folder=out)
    if run.returncode == 0 and not (summary.is_file() and json.loads(summary.read_text("utf-8"))["slide"]):
        problems.append("no summary of the slide")
    return row(lab, run, problems, files_note(out, slide_files="スライド é"), summary_detail(out))


@case("no-mpp", "a TIFF without a pixel size and no --mpp")
def no_mpp(lab: Lab) -> Row:
    import numpy as np
    import tifffile

    slide = lab.path("nompp/plain.tif")
    pixels = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    tifffile.imwrite(slide, pixels, tile=(256, 256), photometric="rgb", metadata=None)
    out = lab.path("nompp/out")
    run = segment(lab, slide, out)
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(1, 2), mentions=["plain.tif"], folder=out)
    problems = unique_problems(
        problems + judge(run, exit_codes=(1, 2), mentions=["--mpp"], where=detail + run.stderr)
    )
    return row(lab, run, unique_problems(problems), files_note(out, slide_files="plain"), detail)


# -- feature files and GeoJSON -------------------------------------------------------------------


def features_copy(lab: Lab, name: str) -> Path:
    target = lab.path(f"{name}/{name}.features.h5")
    target.write_bytes((lab.finished() / "slide.features.h5").read_bytes())
    return target


@case("nan-feature-rows", "segment --features of an h5 with 3 NaN feature rows")
def nan_feature_rows(lab: Lab) -> Row:
    import h5py
    import numpy as np

    features = features_copy(lab, "nanrows")
    with h5py.File(features, "a") as f:
        values = f["features"][...]
        values[[0, 3, 5]] = np.nan
        f["features"][...] = values
    out = lab.path("nanrows/out")
    run = lab.cli("segment", "--features", features, "--out", out, "--quiet")
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(0, 1, 2), folder=out)
    embedding = out / "nanrows.slide_features.h5"
    if run.returncode == 0:
        with h5py.File(embedding, "r") as f:
            finite = bool(np.isfinite(f["features"][...]).all())
        if not finite:
            problems.append("the slide embedding holds NaN")
        if "nan" not in run.output.lower():
            problems.append("nothing says that rows were NaN")
    elif "nanrows" not in run.output or "nan" not in (detail + run.stderr).lower():
        problems.append("the message does not name the file and the NaN rows")
    return row(lab, run, problems, files_note(out, slide_files="nanrows"), detail)


def strings_for_features(lab: Lab, name: str, text: Callable[[float], bytes]) -> Path:
    """A copy of the finished features file whose ``features`` dataset holds ``text(value)`` strings."""
    import h5py
    import numpy as np

    features = features_copy(lab, name)
    with h5py.File(features, "a") as f:
        values = f["features"][...]
        attrs = dict(f["features"].attrs)
        del f["features"]
        f["features"] = np.array([[text(v) for v in line] for line in values], dtype="S16")
        f["features"].attrs.update(attrs)
    return features


@case("string-features", "segment --features of an h5 whose features are the numbers as strings")
def string_features(lab: Lab) -> Row:
    features = strings_for_features(lab, "strfeat", lambda v: f"{v:.7g}".encode())
    out = lab.path("strfeat/out")
    run = lab.cli("segment", "--features", features, "--out", out, "--quiet")
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(0, 1, 2), mentions=["strfeat.features.h5"] if run.returncode else ())
    problems = unique_problems(problems + judge(run, exit_codes=(0, 1, 2), folder=out))
    note = detail + ("; the numeric strings were read as numbers" if run.returncode == 0 else "")
    return row(lab, run, problems, files_note(out, slide_files="strfeat"), note)


@case("text-features", "segment --features of an h5 whose features are the string 'n/a'")
def text_features(lab: Lab) -> Row:
    features = strings_for_features(lab, "txtfeat", lambda v: b"n/a")
    out = lab.path("txtfeat/out")
    run = lab.cli("segment", "--features", features, "--out", out, "--quiet")
    detail = summary_detail(out)
    said = (detail + run.stderr).replace(str(features), "<file>")
    problems = judge(run, exit_codes=(1, 2), mentions=["txtfeat.features.h5"], folder=out)
    problems = unique_problems(
        problems + judge(run, exit_codes=(1, 2), mentions=[("not numeric", "number")], where=said)
    )
    return row(lab, run, problems, files_note(out, slide_files="txtfeat"), detail)


def review(lab: Lab, annotations: Path, *options: str) -> tuple[Run, Path]:
    out_csv = annotations.with_suffix(".agreement.csv")
    care_json = lab.finished() / "slide.care.json"
    return lab.cli("review", care_json, annotations, "--out", out_csv, *options), out_csv


@case("malformed-geojson", "review with a GeoJSON cut in the middle")
def malformed_geojson(lab: Lab) -> Row:
    annotations = lab.path("badjson/cut.geojson")
    annotations.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"ty')
    run, out_csv = review(lab, annotations)
    problems = judge(run, exit_codes=(2,), mentions=["cut.geojson"], where=run.stderr, absent=[out_csv])
    return row(lab, run, problems, files_note(annotations.parent))


@case("nested-json", "review with a GeoJSON nested 100,000 arrays deep")
def nested_json(lab: Lab) -> Row:
    annotations = lab.path("nested/deep.geojson")
    depth = 100_000
    annotations.write_text('{"type": "FeatureCollection", "features": ' + "[" * depth + "]" * depth + "}")
    run, out_csv = review(lab, annotations)
    problems = judge(run, exit_codes=(2,), mentions=["deep.geojson"], where=run.stderr, absent=[out_csv])
    return row(lab, run, problems, files_note(annotations.parent))


@case("self-intersecting-quiet", "review --quiet of 200 self-intersecting (bow-tie) polygons")
def self_intersecting(lab: Lab) -> Row:
    annotations = lab.path("bowtie/bowties.geojson")
    features = []
    for i in range(200):
        x, y = 250 + (i % 20) * 60, 250 + (i // 20) * 80  # over the patches of the finished run
        ring = [[x, y], [x + 50, y + 50], [x + 50, y], [x, y + 50], [x, y]]  # crosses itself
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        )
    annotations.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    run, out_csv = review(lab, annotations, "--quiet")
    problems = judge(run, exit_codes=(0,), folder=annotations.parent)
    stderr_lines = [line for line in run.stderr.splitlines() if line.strip()]
    if len(stderr_lines) > 1:
        problems.append(f"{len(stderr_lines)} stderr lines with --quiet")
    if run.returncode == 0 and not out_csv.is_file():
        problems.append("no agreement CSV")
    note = f"{len(stderr_lines)} stderr lines; stdout: {run.stdout.strip()}"
    return row(lab, run, problems, files_note(annotations.parent), note)


# -- checkpoints ---------------------------------------------------------------------------------


def refused_checkpoint(lab: Lab, name: str, checkpoint: Path, words: list[str]) -> Row:
    out = lab.root / name / "out"
    run = segment(lab, lab.slide(), out, "--care", checkpoint)
    problems = judge(run, exit_codes=(2,), mentions=words, where=run.stderr, absent=[out])
    return row(lab, run, problems, files_note(out))


def care_checkpoint(lab: Lab, name: str) -> Path:
    """A real CARE checkpoint for the default encoder (81-d features): its JSON path."""
    from napari_care.core.checkpoint import save_checkpoint
    from napari_care.core.encoders import get_encoder_cfg
    from napari_care.core.models.care import CareConfig, CareModel

    config = CareConfig(in_dim=get_encoder_cfg("default").embed_dim)
    return save_checkpoint(lab.path(f"{name}/care"), CareModel(config), config)


@case("checkpoint-random-pt", "--care of a .pt of random bytes")
def checkpoint_random_pt(lab: Lab) -> Row:
    checkpoint = lab.path("ckpt_pt/model.pt")
    checkpoint.write_bytes(os.urandom(4096))
    return refused_checkpoint(lab, "ckpt_pt", checkpoint, ["model.pt", "checkpoint"])


@case("checkpoint-bad-json", "--care whose config JSON is not JSON")
def checkpoint_bad_json(lab: Lab) -> Row:
    description = care_checkpoint(lab, "ckpt_json")
    description.write_text('{"format": "napari_care.checkpoint", "config": {')
    return refused_checkpoint(lab, "ckpt_json", description, ["care.json", "JSON"])


@case("checkpoint-huge-header", "--care whose .safetensors header claims 2^60 bytes")
def checkpoint_huge_header(lab: Lab) -> Row:
    description = care_checkpoint(lab, "ckpt_header")
    weights = description.with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 2**60) + data[8:])
    return refused_checkpoint(lab, "ckpt_header", description, ["care.safetensors", "corrupt"])


# -- corrupt tiles ------------------------------------------------------------------------------

BAD_TILE = (3, 2)  # (column, row) of the level-0 file tile spoilt, near the tissue's middle


def spoilt_slide(lab: Lab, name: str, spoil: Callable[[bytearray, int, int], None]) -> Path:
    """A copy of the generated slide, its level-0 tile BAD_TILE spoilt by ``spoil(data, offset, size)``."""
    import tifffile

    source = lab.slide()
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        index = BAD_TILE[1] * -(-SLIDE_SIZE_PX[0] // FILE_TILE_PX) + BAD_TILE[0]
        offset, size = page.dataoffsets[index], page.databytecounts[index]
    data = bytearray(source.read_bytes())
    spoil(data, offset, size)
    target = lab.path(f"{name}/{name}.ome.tif")
    target.write_bytes(bytes(data))
    return target


def junk_start(data: bytearray, offset: int, size: int) -> None:
    data[offset : offset + 16] = b"\x2c\x14" * 8  # no JPEG start-of-image marker any more


@case("corrupt-jpeg-tile", "a JPEG tile whose first bytes are junk: skipped, counted in the row")
def corrupt_jpeg_tile(lab: Lab) -> Row:
    slide = spoilt_slide(lab, "badtile", junk_start)
    out = lab.path("badtile/out")
    run = segment(lab, slide, out, "--min-tissue", "0")
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(0,), folder=out)
    problems = unique_problems(problems + judge(run, exit_codes=(0,), mentions=["skipped"], where=detail))
    problems = unique_problems(
        problems + judge(run, exit_codes=(0,), mentions=["badtile.ome.tif", str(BAD_TILE)])
    )
    return row(lab, run, unique_problems(problems), files_note(out, slide_files="badtile"), detail)


@case("corrupt-jpeg-tile-strict", "the same slide with --strict: the slide fails, naming the tile")
def corrupt_jpeg_tile_strict(lab: Lab) -> Row:
    slide = spoilt_slide(lab, "badtilestrict", junk_start)
    out = lab.path("badtilestrict/out")
    run = segment(lab, slide, out, "--min-tissue", "0", "--strict")
    detail = summary_detail(out)
    problems = judge(run, exit_codes=(1,), folder=out)
    problems = unique_problems(
        problems + judge(run, exit_codes=(1,), mentions=["level 0", str(BAD_TILE)], where=detail)
    )
    files = files_note(out, slide_files="badtilestrict")
    return row(lab, run, unique_problems(problems), files, detail)


@case("flipped-jpeg-byte", "one byte flipped inside a JPEG tile's entropy-coded data")
def flipped_jpeg_byte(lab: Lab) -> Row:
    import h5py
    import numpy as np

    def flip(data: bytearray, offset: int, size: int) -> None:
        data[offset + size // 2] ^= 0xFF

    slide = spoilt_slide(lab, "flipped", flip)
    out = lab.path("flipped/out")
    run = segment(lab, slide, out)
    problems = judge(run, exit_codes=(0, 1), folder=out)
    note = summary_detail(out)
    features = out / "flipped.features.h5"
    if run.returncode == 0 and features.is_file():
        with h5py.File(features, "r") as f, h5py.File(lab.finished() / "slide.features.h5", "r") as g:
            new, old = f["features"][...], g["features"][...]
        if new.shape == old.shape:
            changed = int((np.abs(new - old).max(axis=1) > 1e-6).sum())
            note += f"; {changed} of {len(new)} patches' features differ from the clean slide's"
        else:
            note += f"; {len(new)} patches against {len(old)} on the clean slide"
        warned = "could not be decoded" in run.stderr or "corrupt" in run.stderr.lower()
        note += "; a warning names the tile" if warned else "; no warning (undetectable without checksums)"
    return row(lab, run, problems, files_note(out, slide_files="flipped"), note)
