"""Mixed-magnification patch features: each region's tile at 5x, its 2x2 at 10x and 4x4 at 20x.

A *region* is a square footprint of ``region_size_px`` pixels at 20x (default 896 px =
448 um). It is covered by one tile at 5x, 2 x 2 tiles at 10x and 4 x 4 tiles at 20x, every
tile ``region_size_px / 4`` pixels wide (224 by default) at its own magnification. The
three grids come from :func:`~napari_care.core.tiling.tile_grid`, which anchors them at the
slide's origin and reads each from its nearest finer-or-equal pyramid level, so the region
with grid index (gx, gy) holds exactly the 10x tiles (2gx + i, 2gy + j) and the 20x tiles
(4gx + i, 4gy + j). All three are encoded by the one extraction pipeline,
:func:`~napari_care.core.extract.extract_features`, with one feature cache.

Regions are the 5x tiles with at least ``min_tissue`` tissue; a 10x or 20x tile of a
region is kept when it, too, has ``min_tissue`` tissue. Tiles left out (off tissue, or past
the slide's edge) are *missing*: :meth:`MixMagFeatures.to_region_tokens` marks them absent.

HDF5 layout (:func:`save_mixmag` / :func:`load_mixmag`), one file per slide, ``<m>`` one of
``5x``, ``10x``, ``20x``:

=================  ============  =====================================================
dataset            shape, type   content
=================  ============  =====================================================
``features_<m>``   [N_m, D] f4   tile embeddings (one row per region for ``5x``)
``coords_<m>``     [N_m, 2] i8   level-0 (x, y) of each tile's top-left corner
``region_<m>``     [N_m] i8      row in ``features_5x`` of the tile's region
``position_<m>``   [N_m] i8      slot within the region, row-major: (gy % s) * s + gx % s,
                                 s = 1, 2, 4 tiles per region side
=================  ============  =====================================================

Attributes of ``features_<m>``: ``mpp``, ``magnification``, ``patch_size_px``,
``patch_size_level0``. File attributes: ``format = "napari_care.mixmag"``,
``format_version``, ``encoder``, ``slide_id``, ``region_size_level0``, ``magnifications``,
``min_tissue`` (absent in files written before it was recorded).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_care.core.atomic import atomic_path, output_set
from napari_care.core.extract import STAGE, CancelSignal, extract_features
from napari_care.core.feature_cache import FeatureCache
from napari_care.core.features import SETTINGS_ATTRIBUTE, PatchFeatures, create_hdf5, open_hdf5, settings_text
from napari_care.core.jobs import job_settings, run_job, shared_encoder
from napari_care.core.models.mixmag_layout import MAGNIFICATION_NAMES, TILES_PER_SIDE
from napari_care.core.progress import Progress, map_progress, run_to_end
from napari_care.core.segment import NoTissueError
from napari_care.core.tiling import DEFAULT_MPP, TileGrid, grid_rows, tile_grid
from napari_care.core.tissue import TissueMask, tissue_mask

FORMAT = "napari_care.mixmag"
FORMAT_VERSION = 1
SUFFIX = ".mixmag.h5"  # file name of a slide's features: <stem>.mixmag.h5


@dataclass
class MixMagFeatures:
    """Tile features of one slide at 5x, 10x and 20x, grouped by region.

    Parameters
    ----------
    levels
        Features at 5x, 10x and 20x (one encoder, so one D); ``levels[0]`` has one row per
        region and its coords are the regions' top-left corners.
    region_of_tile
        Per magnification, ``[N_m]`` int64: the row in ``levels[0]`` of each tile's region.
    position_in_region
        Per magnification, ``[N_m]`` int64 slot within the region, row-major (see the module
        docstring); always 0 at 5x.
    min_tissue
        The tissue share each kept tile needed (NaN where not recorded).
    """

    levels: tuple[PatchFeatures, PatchFeatures, PatchFeatures]
    region_of_tile: tuple[np.ndarray, np.ndarray, np.ndarray]
    position_in_region: tuple[np.ndarray, np.ndarray, np.ndarray]
    min_tissue: float = float("nan")

    def __post_init__(self) -> None:
        if not len(self.levels) == len(self.region_of_tile) == len(self.position_in_region) == 3:
            raise ValueError(
                "MixMagFeatures needs features, regions and positions at 5x, 10x and 20x (three each)"
            )
        dims = {pf.embed_dim for pf in self.levels}
        if len(dims) != 1:
            raise ValueError(f"MixMagFeatures: the three magnifications have different D: {sorted(dims)}")
        self.region_of_tile = tuple(np.asarray(r, dtype=np.int64).ravel() for r in self.region_of_tile)
        self.position_in_region = tuple(
            np.asarray(p, dtype=np.int64).ravel() for p in self.position_in_region
        )
        for name, pf, regions, positions, side in zip(
            MAGNIFICATION_NAMES,
            self.levels,
            self.region_of_tile,
            self.position_in_region,
            TILES_PER_SIDE,
            strict=True,
        ):
            if not len(pf) == len(regions) == len(positions):
                raise ValueError(
                    f"MixMagFeatures {name}: {len(pf)} tiles, {len(regions)} region indices, "
                    f"{len(positions)} positions"
                )
            if len(pf) and not (regions.min() >= 0 and regions.max() < self.n_regions):
                raise ValueError(f"MixMagFeatures {name}: region index outside 0..{self.n_regions - 1}")
            if len(pf) and not (positions.min() >= 0 and positions.max() < side * side):
                raise ValueError(f"MixMagFeatures {name}: position outside 0..{side * side - 1}")

    @property
    def n_regions(self) -> int:
        """Regions (5x tiles) on tissue."""
        return len(self.levels[0])

    @property
    def region_size_level0(self) -> float:
        """Region side in level-0 pixels (the 5x tile side)."""
        return self.levels[0].patch_size_level0

    @property
    def slide_id(self) -> str:
        """Name of the slide."""
        return self.levels[0].slide_id

    @property
    def encoder(self) -> str:
        """Name of the patch encoder."""
        return self.levels[0].encoder

    @property
    def tile_counts(self) -> tuple[int, int, int]:
        """Tiles at 5x, 10x and 20x."""
        return tuple(len(pf) for pf in self.levels)  # type: ignore[return-value]

    def to_region_tokens(self):
        """The slide's :class:`~napari_care.core.models.mixmag.RegionTokens`, ``[R, 21, D]``.

        Token slots follow :mod:`napari_care.core.models.mixmag` (5x, then 10x and 20x
        row-major); missing tiles are zeros with ``token_present`` False.
        """
        from napari_care.core.models.mixmag import RegionTokens  # torch only when asked

        tokens = np.zeros(
            (self.n_regions, sum(s * s for s in TILES_PER_SIDE), self.levels[0].embed_dim), np.float32
        )
        present = np.zeros(tokens.shape[:2], dtype=bool)
        first_slot = 0
        for pf, regions, positions, side in zip(
            self.levels, self.region_of_tile, self.position_in_region, TILES_PER_SIDE, strict=True
        ):
            tokens[regions, first_slot + positions] = pf.features
            present[regions, first_slot + positions] = True
            first_slot += side * side
        return RegionTokens(
            tokens, present, self.levels[0].coords.copy(), self.region_size_level0, self.slide_id
        )


def _regions_of(coarse: TileGrid, fine_grid_xy: np.ndarray, side: int) -> np.ndarray:
    """Row in ``coarse`` of the region under each fine grid index, -1 where there is none."""
    return grid_rows(coarse.grid, np.asarray(fine_grid_xy) // side)


def mixmag_grids(
    slide,
    *,
    region_size_px: int = 896,
    mpp: float = DEFAULT_MPP,
    min_tissue: float = 0.25,
    tissue: TissueMask | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> tuple[TileGrid, TileGrid, TileGrid]:
    """The tile grids at 5x, 10x and 20x of a slide's regions on tissue.

    Parameters
    ----------
    slide
        A calibrated :class:`~napari_care.core.slide.handle.Slide` (the grids are set in micrometres).
    region_size_px
        Region side in pixels at 20x, a multiple of 4; every tile is a quarter of it.
    mpp
        Micrometres per pixel of the finest ("20x") grid; the others are at 2x and 4x that.
    min_tissue
        Share of tissue a region (5x tile), and each of its finer tiles, needs to be kept.
    tissue
        A tissue mask; computed once with :func:`~napari_care.core.tissue.tissue_mask` when
        needed and not given.
    box
        Level-0 (x0, y0, x1, y1): only the regions that meet it (e.g. the visible field),
        whole; None for the slide.

    Returns
    -------
    (TileGrid, TileGrid, TileGrid)
        5x (one tile per region), 10x and 20x (only tiles inside those regions).
    """
    if int(region_size_px) != region_size_px or region_size_px < 4 or region_size_px % 4:
        raise ValueError(
            f"region_size_px must be a positive multiple of 4 (pixels at 20x), got {region_size_px}"
        )
    if slide.mpp is None:
        raise ValueError(
            f"slide {slide.path} has no pixel size (mpp); open it with open_slide(path, mpp=...) "
            "to extract mixed-magnification features"
        )
    if tissue is None and min_tissue > 0:
        tissue = tissue_mask(slide)
    tile_size_px = int(region_size_px) // 4
    grids, where = [], box
    for side in TILES_PER_SIDE:
        grid = tile_grid(
            slide,
            mpp=mpp * 4 / side,
            tile_size_px=tile_size_px,
            min_tissue=min_tissue,
            tissue=tissue,
            box=where,
        )
        if side == 1 and box is not None and len(grid):  # finer tiles only over the chosen regions
            where = (*grid.coords.min(axis=0), *(grid.coords.max(axis=0) + grid.tile_size_level0))
        grids.append(grid if side == 1 else grid.take(_regions_of(grids[0], grid.grid, side) >= 0))
    return grids[0], grids[1], grids[2]


def extract_mixmag(
    slide,
    encoder,
    *,
    region_size_px: int = 896,
    mpp: float = DEFAULT_MPP,
    min_tissue: float = 0.25,
    tissue: TissueMask | None = None,
    box: tuple[float, float, float, float] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    cancel: CancelSignal = None,
) -> Generator[Progress, None, MixMagFeatures]:
    """Encode every region on tissue at 5x, 10x and 20x.

    Parameters
    ----------
    slide
        A calibrated :class:`~napari_care.core.slide.handle.Slide`.
    encoder
        A patch encoder (``encode``, ``cfg.name``, ``embed_dim``), the same at all three
        magnifications.
    region_size_px, mpp, min_tissue, tissue, box
        The geometry, tissue rule and the part of the slide (see :func:`mixmag_grids`).
    cache
        A :class:`~napari_care.core.feature_cache.FeatureCache`; each magnification has its
        own key, so one cache serves all three and a second run encodes nothing.
    batch_size, num_workers
        Tiles per encoder call and reader threads.
    cancel
        A ``threading.Event`` or callable; when set, raises
        :class:`~napari_care.core.extract.Cancelled` within one batch.

    Yields
    ------
    Progress
        ``stage="extract"``, tiles done of the three grids' total.

    Returns
    -------
    MixMagFeatures
    """
    grids = mixmag_grids(
        slide, region_size_px=region_size_px, mpp=mpp, min_tissue=min_tissue, tissue=tissue, box=box
    )
    total, done = sum(len(grid) for grid in grids), 0
    levels, regions, positions = [], [], []
    for name, grid, side in zip(MAGNIFICATION_NAMES, grids, TILES_PER_SIDE, strict=True):
        work = extract_features(  # a skipped patch would leave its region's token rows out of line: fail
            slide,
            grid,
            encoder,
            batch_size=batch_size,
            num_workers=num_workers,
            cache=cache,
            cancel=cancel,
            on_bad_tile="raise",
        )
        levels.append(
            (
                yield from map_progress(
                    work,
                    lambda report, offset=done, name=name: Progress(
                        report.stage, offset + report.done, total, f"{name}: {report.message}"
                    ),
                )
            )
        )
        regions.append(_regions_of(grids[0], grid.grid, side))
        positions.append((grid.grid[:, 1] % side) * side + grid.grid[:, 0] % side)
        done += len(grid)
    yield Progress(
        STAGE,
        total,
        total,
        f"{Path(slide.path).name}: {len(grids[0])} regions, {total} tiles at 3 magnifications",
    )
    return MixMagFeatures(tuple(levels), tuple(regions), tuple(positions), float(min_tissue))  # type: ignore[arg-type]


def save_mixmag(
    path: str | os.PathLike[str], mf: MixMagFeatures, *, settings: dict[str, Any] | None = None
) -> Path:
    """Write mixed-magnification features to one HDF5 file, atomically (layout: module docstring).

    ``settings`` (the run's, for a rerun to compare) go to the file attribute
    :data:`~napari_care.core.features.SETTINGS_ATTRIBUTE` as JSON.

    Returns
    -------
    The path written.

    Raises
    ------
    OSError
        When the file cannot be written (a full disk: errno ENOSPC); the target is unchanged.
    """
    path = Path(path)
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        if settings is not None:
            f.attrs[SETTINGS_ATTRIBUTE] = settings_text(settings)
        f.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "encoder": mf.encoder,
                "slide_id": mf.slide_id,
                "region_size_level0": mf.region_size_level0,
                "magnifications": list(MAGNIFICATION_NAMES),
                "min_tissue": mf.min_tissue,
            }
        )
        for name, pf, regions, positions in zip(
            MAGNIFICATION_NAMES, mf.levels, mf.region_of_tile, mf.position_in_region, strict=True
        ):
            features = f.create_dataset(f"features_{name}", data=pf.features)
            f.create_dataset(f"coords_{name}", data=pf.coords)
            f.create_dataset(f"region_{name}", data=regions)
            f.create_dataset(f"position_{name}", data=positions)
            features.attrs.update(
                {
                    "patch_size_px": pf.patch_size_px,
                    "patch_size_level0": pf.patch_size_level0,
                    "mpp": np.nan if pf.mpp is None else pf.mpp,
                    "magnification": np.nan if pf.magnification is None else pf.magnification,
                }
            )
    return path


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def is_mixmag_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`save_mixmag` (cheap: attributes only)."""
    import h5py  # h5py loads only for feature files

    try:
        with h5py.File(path, "r") as f:
            return _text(f.attrs.get("format", "")) == FORMAT
    except OSError:
        return False


def load_mixmag(path: str | os.PathLike[str]) -> MixMagFeatures:
    """Read a file written by :func:`save_mixmag`.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not a mixed-magnification feature file, or its datasets disagree.
    """
    path = Path(path)
    with open_hdf5(path, "mixed-magnification feature file") as f:
        if _text(f.attrs.get("format", "")) != FORMAT:
            raise ValueError(
                f"{path}: not a mixed-magnification feature file (no format={FORMAT!r} attribute; "
                "write one with `napari-care extract --mixmag`)"
            )
        missing = [
            f"{kind}_{name}"
            for name in MAGNIFICATION_NAMES
            for kind in ("features", "coords", "region", "position")
            if f"{kind}_{name}" not in f
        ]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}")
        encoder, slide_id = _text(f.attrs.get("encoder", "")), _text(f.attrs.get("slide_id", "")) or path.name
        min_tissue = float(f.attrs.get("min_tissue", np.nan))  # files before it was recorded: unknown
        levels, regions, positions = [], [], []
        for name in MAGNIFICATION_NAMES:
            attrs = f[f"features_{name}"].attrs
            mpp = float(attrs["mpp"])
            levels.append(
                PatchFeatures(
                    features=f[f"features_{name}"][()],
                    coords=f[f"coords_{name}"][()],
                    patch_size_px=int(attrs["patch_size_px"]),
                    patch_size_level0=float(attrs["patch_size_level0"]),
                    mpp=mpp if np.isfinite(mpp) else None,
                    encoder=encoder,
                    slide_id=slide_id,
                )
            )
            regions.append(f[f"region_{name}"][()])
            positions.append(f[f"position_{name}"][()])
    try:
        return MixMagFeatures(tuple(levels), tuple(regions), tuple(positions), min_tissue)  # type: ignore[arg-type]
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def mixmag_job(
    job, out_dir: str | os.PathLike[str], options, *, overwrite: bool = False, on_progress=None
) -> dict[str, Any]:
    """Extract one slide's mixed-magnification features to ``<stem>.mixmag.h5``; return its status row.

    The per-slide job of ``napari-care extract --mixmag``, framed like
    :func:`~napari_care.core.jobs.extract_job` (skips a finished slide with the same
    settings, refuses one with others unless ``overwrite``, never raises for a bad one).

    Parameters
    ----------
    job
        A :class:`~napari_care.core.jobs.SlideJob`.
    out_dir
        Output folder.
    options
        :class:`~napari_care.core.segment.SegmentOptions`: its encoder, tissue threshold,
        ``min_tissue`` and batch size; the finest grid is at ``mpp`` (or ``magnification``)
        and a region is 4 x ``tile_size_px`` pixels there (896 px at 20x by default).
    overwrite
        Redo a slide whose file exists.
    on_progress
        Called with the slide's :class:`~napari_care.core.progress.Progress` reports.

    Returns
    -------
    dict
        ``slide``, ``status`` (done / skipped / failed), ``seconds``, ``detail``.
    """
    target = Path(out_dir) / f"{job.stem}{SUFFIX}"

    def work(slide, settings: dict[str, Any]) -> str:
        tissue = tissue_mask(slide, saturation_threshold=options.tissue_threshold)
        mf = run_to_end(
            extract_mixmag(
                slide,
                shared_encoder(options),
                region_size_px=4 * options.tile_size_px,
                mpp=options.mpp or 10.0 / options.magnification,
                min_tissue=options.min_tissue,
                tissue=tissue,
                batch_size=options.batch_size,
            ),
            on_progress,
        )
        if mf.n_regions == 0:
            raise NoTissueError(f"{job.path.name}: no region with tissue")
        for pf in mf.levels:
            pf.slide_id = job.stem
        with output_set(job.path.name) as files:
            save_mixmag(files.temporary(target), mf, settings=settings)
        counts = mf.tile_counts
        return f"{counts[0]} regions, {counts[1]} tiles at 10x, {counts[2]} at 20x"

    settings = functools.partial(job_settings, options, job, "extract")
    return run_job(job, target, work, overwrite=overwrite, settings=settings)
