"""Everything a ``segment`` / ``extract`` run can check before it computes any slide.

A typo (``--k 1000000``, ``--magnification 1000``, a read-only ``--out``, a corrupt
``--care`` file) is refused in a second, with a message that names the option or file,
instead of after hours of work or with degenerate output. What only a slide's run can
find (an unreadable file, no tissue) stays a ``failed`` row of the cohort's summary.

>>> from napari_care.core.preflight import preflight
>>> notes = preflight(jobs, "results", SegmentOptions(k=8))  # raises PreflightError
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from napari_care.core.encoders import get_encoder_cfg
from napari_care.core.models.care_hf import (
    HfCareError,
    HfCareSource,
    check_care_features,
    parse_care_source,
    resolve_snapshot,
)
from napari_care.core.segment import OptionError, SegmentOptions, check_options
from napari_care.core.slide.handle import Slide, SlideReadError, open_slide
from napari_care.core.slide.meta import normalise_user_mpp
from napari_care.core.tiling import tile_count_estimate

#: Default of ``--max-tiles``: tiles one slide may make at the run's resolution (a 40x
#: scan of 200,000 x 100,000 px at 20x and 224 px makes ~100,000).
DEFAULT_MAX_TILES = 2_000_000
#: A target magnification up to this factor above the scan's is not upsampling worth a
#: refusal (scanners say 40x of 0.2525 or 0.263 um/px).
UPSAMPLING_TOLERANCE = 1.1
#: Micrometres per pixel of a 10x objective (the scan's magnification is 10 / mpp).
MPP_AT_10X = 1.0
#: The patch encoder whose features the authors' CARE model was trained on.
CONCH_V15 = "conch_v1_5"


class PreflightError(ValueError):
    """Bad input found before any work; the message names the file or option.

    ``notes`` are the warnings found before it (show them too: one may be the reason).
    """

    notes: tuple[str, ...] = ()


class _Job(Protocol):  # a napari_care.core.jobs.SlideJob (not imported: jobs imports this module)
    path: Path
    mpp: float | None
    force_mpp: bool


@dataclass(frozen=True)
class SlidePlan:
    """What the checks learned of one slide.

    Attributes
    ----------
    path
        The slide.
    mpp
        Micrometres per level-0 pixel the run will use (file's or given), or None.
    scan_magnification
        The scan's magnification: the file's objective power or ``10 / mpp``, the larger.
    tiles
        Tiles the options would lay over the whole slide (before tissue detection).
    """

    path: Path
    mpp: float | None
    scan_magnification: float | None
    tiles: int | None


def open_calibrated(
    path: str | os.PathLike[str], mpp: float | None = None, *, force_mpp: bool = False
) -> Slide:
    """Open a slide with a fallback pixel size: ``mpp`` is used only when the file has none.

    Parameters
    ----------
    path
        The slide file.
    mpp
        Micrometres per level-0 pixel for a file without a calibration.
    force_mpp
        Use ``mpp`` even when the file has its own (a slide list's per-slide column).

    Returns
    -------
    Slide
        Open; close it (or use it as a context manager).
    """
    if mpp is None or force_mpp:
        return open_slide(path, mpp=mpp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no mpp in the file: the fallback below gives one
        slide = open_slide(path)
    if slide.mpp is not None:
        return slide
    slide.close()
    return open_slide(path, mpp=mpp)  # an uncalibrated slide: rare, so opening twice is cheap


def check_output_folder(out_dir: str | os.PathLike[str]) -> None:
    """Check that a run can write into ``out_dir``: write and remove a probe file there.

    Folders that are missing are created for the probe and removed again, so a run refused
    later leaves nothing behind (the run's first output creates them).

    Raises
    ------
    PreflightError
        Naming the folder and why (read-only, a file in the way, no space...).
    """
    folder = Path(out_dir).absolute()
    created: list[Path] = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            created.append(parent)
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        probe = folder / f".napari-care-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PreflightError(f"--out {out_dir}: cannot write there ({error.strerror or error})") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:  # someone else wrote there meanwhile: theirs
                pass


def check_care_checkpoint(
    path: str | os.PathLike[str],
    encoder: str,
    *,
    tile_size_px: int | None = None,
    mpp: float | None = None,
) -> list[str]:
    """Check that ``path`` is a readable CARE model that fits ``encoder``'s features.

    ``path`` is a napari_care checkpoint, or the authors' model (``hf:Zipper-1/CARE`` or a
    snapshot folder, :mod:`napari_care.core.models.care_hf`): transformers is importable, the
    snapshot is in the Hugging Face cache (or the folder), the encoder gives 768-d features
    and the tiles are 512 px at 20x. Nothing is loaded for the authors' model.

    Parameters
    ----------
    path
        The ``--care`` value.
    encoder
        The patch encoder's name.
    tile_size_px, mpp
        The run's tile side and micrometres per tile pixel (the authors' model only); None
        skips that check.

    Returns
    -------
    list of str
        Warnings (768-d features of another encoder than CONCH v1.5 for the authors' model).

    Raises
    ------
    PreflightError
        Naming the file or id: missing, not a napari_care checkpoint, another model, corrupt
        weights, features of another dimension than the encoder gives; for the authors'
        model also transformers missing, the snapshot not found, or other tiles.
    """
    try:
        source = parse_care_source(path)
        if source is not None:
            return _check_hf_care(source, encoder, tile_size_px=tile_size_px, mpp=mpp)
    except HfCareError as error:
        raise PreflightError(str(error)) from None
    from napari_care.core.checkpoint import load_checkpoint, read_checkpoint_description  # torch
    from napari_care.core.models.care import CareModel  # torch

    expected = f"{CareModel.__module__}.{CareModel.__qualname__}"
    try:
        description = read_checkpoint_description(path)
        if description["model_class"] != expected:
            raise ValueError(
                f"{path} holds the model {str(description['model_class']).rpartition('.')[2]}, "
                f"not a CARE model ({CareModel.__name__})"
            )
        _, config, _ = load_checkpoint(path, CareModel)
    except (OSError, ValueError) as error:
        raise PreflightError(f"--care: {error}") from None
    dim = get_encoder_cfg(encoder).embed_dim
    if not encoder.startswith("timm:") and int(config.in_dim) != int(dim):  # timm: known once built
        raise PreflightError(
            f"--care {path} expects D={config.in_dim} features but the encoder '{encoder}' gives {dim}"
        )
    return []


def _check_hf_care(
    source: HfCareSource, encoder: str, *, tile_size_px: int | None, mpp: float | None
) -> list[str]:
    resolve_snapshot(source)
    cfg = get_encoder_cfg(encoder)
    known_width = not encoder.startswith("timm:")  # a timm: model's width is known once built
    check_care_features(
        source.label,
        embed_dim=cfg.embed_dim if known_width else None,
        where=f"--encoder {encoder}'s features",
    )
    check_care_features(
        source.label, embed_dim=None, patch_size_px=tile_size_px, mpp=mpp, where="this run's tiles"
    )
    if cfg.name != CONCH_V15:
        return [
            f"--care {source.label} was trained on CONCH v1.5 features (--encoder conch_v15); "
            f"--encoder {encoder} gives other features, on which its slide embeddings mean little"
        ]
    return []


def check_slide_paths(jobs: Sequence[_Job]) -> None:
    """Each slide is an existing file (a folder or a missing path is bad input) with a usable mpp.

    Raises
    ------
    PreflightError
        Naming the first path that is not a file, or whose given mpp is out of range.
    """
    for job in jobs:
        path = Path(job.path)
        if path.is_dir():
            raise PreflightError(f"{path} is a folder, not a slide file")
        if not path.is_file():
            raise PreflightError(f"{path}: no such slide file")
        try:
            normalise_user_mpp(job.mpp)
        except ValueError as error:
            raise PreflightError(f"--mpp (or the slide list's mpp) of {path.name}: {error}") from None


def plan_slide(
    job: _Job, options: SegmentOptions, *, max_tiles: int, allow_upsampling: bool, notes: list[str]
) -> SlidePlan | None:
    """Check one slide against the options: the tile count and the magnification.

    Warnings (an ``mpp`` that the file's calibration overrides) are appended to ``notes``.

    Returns
    -------
    SlidePlan or None
        None when the slide cannot be read (its run reports why).

    Raises
    ------
    PreflightError
        When the options would make more than ``max_tiles`` tiles of the slide, or ask for
        a magnification above the scan's without ``allow_upsampling``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_slide(job.path) as slide:
                file_mpp, objective, size = slide.mpp, slide.objective_power, slide.dimensions[0]
    except (OSError, SlideReadError, ValueError):
        return None  # an unreadable slide is its own row of the summary
    mpp = float(sum(file_mpp)) / 2 if file_mpp else None
    if job.mpp is not None:
        if mpp is None or job.force_mpp:
            mpp = float(job.mpp)
        elif not math.isclose(mpp, job.mpp, rel_tol=1e-3):
            notes.append(
                f"{job.path.name}: the file says {mpp:.4g} um/px; --mpp {job.mpp:g} is used only for "
                "slides without one (give --force-mpp to override the file)"
            )
    if mpp is None:
        return SlidePlan(Path(job.path), None, objective, None)  # its run says "give --mpp"
    scan = max(objective or 0.0, 10.0 * MPP_AT_10X / mpp)
    target_mpp = options.mpp or 10.0 * MPP_AT_10X / options.magnification
    target_magnification = 10.0 * MPP_AT_10X / target_mpp
    if target_magnification > scan * UPSAMPLING_TOLERANCE and not allow_upsampling:
        raise PreflightError(
            f"--magnification {target_magnification:g} is above the scan of {job.path.name} "
            f"({scan:.3g}x, {mpp:.4g} um/px): {target_magnification / scan:.3g}x upsampling; "
            "lower --magnification or give --allow-upsampling"
        )
    try:
        tiles = tile_count_estimate(size, target_mpp / mpp, int(options.tile_size_px))
    except ValueError:  # a magnification so small that a tile's level-0 side overflows
        raise PreflightError(
            f"--magnification {target_magnification:g} is too small for {job.path.name}: a tile's "
            "level-0 side overflows; give a larger --magnification"
        ) from None
    tile0 = int(options.tile_size_px) * target_mpp / mpp  # a tile's level-0 side
    most_tissue = (size[0] / tile0) * (size[1] / tile0)  # the largest tissue share a tile can reach
    if options.min_tissue > 0 and most_tissue < options.min_tissue:
        raise PreflightError(
            f"{job.path.name}: at {target_magnification:g}x a {options.tile_size_px}-px tile covers "
            f"{tile0:,.0f} level-0 px, more than the slide ({size[0]:,} x {size[1]:,} px): no tile can "
            f"hold the --min-tissue share {options.min_tissue:g}; raise --magnification or lower --tile-size"
        )
    if tiles > max_tiles:
        raise PreflightError(
            f"{job.path.name}: --tile-size {options.tile_size_px} at {target_magnification:g}x would make "
            f"{tiles:,} tiles ({size[0]:,} x {size[1]:,} px at {mpp:.4g} um/px), above --max-tiles "
            f"{max_tiles:,}; raise --max-tiles, the tile size, or lower --magnification"
        )
    return SlidePlan(Path(job.path), mpp, scan, tiles)


def preflight(
    jobs: Sequence[_Job],
    out_dir: str | os.PathLike[str],
    options: SegmentOptions,
    *,
    max_tiles: int = DEFAULT_MAX_TILES,
    allow_upsampling: bool = False,
) -> list[str]:
    """Check a run before any slide is computed: options, slides, checkpoint, output folder.

    In order, cheapest first: every option's range (:data:`~napari_care.core.segment.OPTION_LIMITS`),
    the encoder's name, each slide path is a file, each readable slide's tile count and
    magnification, the CARE checkpoint (``options.care_checkpoint``), and that ``out_dir``
    can be written.

    Parameters
    ----------
    jobs
        The slides (:class:`~napari_care.core.jobs.SlideJob`).
    out_dir
        The output folder.
    options
        The run's options.
    max_tiles
        Most tiles one slide may make (before tissue detection).
    allow_upsampling
        Accept a magnification above the scan's.

    Returns
    -------
    list of str
        Warnings to show (e.g. an ``--mpp`` that a calibrated slide ignores).

    Raises
    ------
    PreflightError
        The first problem found; the message names the option or file.
    OptionError
        An option out of its range (``option`` names the field of :class:`SegmentOptions`).
    """
    check_options(options)
    if not int(max_tiles) >= 1:
        raise OptionError("max_tiles", max_tiles, "must be at least 1")
    try:
        get_encoder_cfg(options.encoder)
    except KeyError as error:
        raise PreflightError(f"--encoder: {error.args[0]}") from None
    check_slide_paths(jobs)
    notes: list[str] = []
    try:
        for job in jobs:
            plan_slide(job, options, max_tiles=max_tiles, allow_upsampling=allow_upsampling, notes=notes)
        if options.care_checkpoint:
            target_mpp = options.mpp or 10.0 * MPP_AT_10X / options.magnification
            notes += check_care_checkpoint(
                options.care_checkpoint, options.encoder, tile_size_px=options.tile_size_px, mpp=target_mpp
            )
        check_output_folder(out_dir)
    except PreflightError as error:
        error.notes = (*notes, *error.notes)
        raise
    return notes
