"""State kept between runs on one slide, so that reruns and new views cost only new work.

A :class:`SegmentSession` remembers the tissue mask (per threshold), the encoders and CARE
models it built, a feature cache (panning the visible field encodes only the tiles that came
into view) and the feature files it read (a run on a file of the slide's features, made by
TRIDENT, CLAM or ``napari-care extract``, encodes nothing). The widget keeps one per slide;
scripts may too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from napari_care.core.care_run import load_care_model
from napari_care.core.feature_cache import FeatureCache
from napari_care.core.features import PatchFeatures, load_features
from napari_care.core.mil.heads import MilHead, MilOutput, load_mil_head
from napari_care.core.mil.regions import RegionAttention, attend_regions, patch_output
from napari_care.core.progress import Progress
from napari_care.core.segment import (
    Box,
    SegmentOptions,
    SegmentResult,
    build_encoder,
    segment,
    segment_from_features,
)
from napari_care.core.slide.handle import Slide
from napari_care.core.tissue import TissueMask, tissue_mask


class MilRun(NamedTuple):
    """What :meth:`SegmentSession.run_with_mil` returns.

    Attributes
    ----------
    result
        The segmentation.
    mil_output
        The head's attention over the run's patches and its prediction (None without a head).
    mil_head
        The head, loaded (None without one): the caller may keep it for the next run.
    """

    result: SegmentResult
    mil_output: MilOutput | None
    mil_head: MilHead | None


class SegmentSession:
    """Repeated segmentation runs on one slide.

    Parameters
    ----------
    slide
        The open slide.
    cache
        Feature cache to use (a fresh in-memory one by default).
    """

    def __init__(self, slide: Slide, cache: FeatureCache | None = None) -> None:
        self.slide = slide
        self.cache = cache if cache is not None else FeatureCache()
        self._tissue: dict[float | None, TissueMask] = {}
        self._encoders: dict[tuple, object] = {}
        self._models: dict[tuple, object] = {}
        self._feature_files: dict[tuple, PatchFeatures] = {}
        self._lock = threading.Lock()  # runs may overlap briefly while a stale one winds down

    def tissue(self, threshold: float | None) -> TissueMask:
        """The slide's tissue mask at a saturation threshold (None: Otsu), computed once."""
        with self._lock:
            if threshold not in self._tissue:
                self._tissue[threshold] = tissue_mask(self.slide, saturation_threshold=threshold)
            return self._tissue[threshold]

    def encoder(self, options: SegmentOptions):
        """The encoder ``options`` name, built once."""
        key = (options.encoder, options.encoder_weights, options.device)
        with self._lock:
            if key not in self._encoders:
                self._encoders[key] = build_encoder(options)
            return self._encoders[key]

    def model(self, options: SegmentOptions, in_dim: int):
        """The CARE model of ``options.care_checkpoint`` (None: training-free), loaded once."""
        if not options.care_checkpoint:
            return None
        key = (options.care_checkpoint, in_dim, options.device)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_care_model(
                    options.care_checkpoint, in_dim=in_dim, device=options.device
                )
            return self._models[key]

    def features(self, path: str | Path, patch_size_px: int | None = None) -> PatchFeatures:
        """The patch features of a file (:func:`~napari_care.core.features.load_features`), read
        once per file version; ``patch_size_px`` as there (CLAM files without attributes)."""
        path = Path(path)
        key = (str(path.resolve()), path.stat().st_mtime_ns, patch_size_px)
        with self._lock:
            if key not in self._feature_files:
                self._feature_files = {key: load_features(path, patch_size_px=patch_size_px)}  # the last one
            return self._feature_files[key]

    def run(
        self,
        options: SegmentOptions,
        box: Box | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        features_path: str | Path | None = None,
    ) -> Generator[Progress, None, SegmentResult]:
        """Segment the slide (or ``box``), reusing everything earlier runs made.

        With ``features_path``, the patch features of that file (of this slide) are segmented
        instead of encoding tiles: ``options``' encoder and tiling are not used.
        """
        if features_path is not None:
            yield Progress("features", 0, 1, f"reading {Path(features_path).name}")
            features = self.features(features_path)
            model = self.model(options, features.embed_dim)
            run = segment_from_features(features, options, slide=self.slide, box=box, model=model)
            return (yield from run)
        yield Progress("tissue", 0, 1, "finding tissue")
        tissue = self.tissue(options.tissue_threshold)
        yield Progress("encoder", 0, 1, f"loading encoder {options.encoder}")
        encoder = self.encoder(options)
        model = self.model(options, encoder.embed_dim)
        return (
            yield from segment(
                self.slide,
                options,
                box=box,
                tissue=tissue,
                cache=self.cache,
                encoder=encoder,
                model=model,
                cancel=cancel,
            )
        )

    def attend_regions(
        self,
        options: SegmentOptions,
        head: MilHead,
        box: Box | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> Generator[Progress, None, RegionAttention | None]:
        """Apply a MIL head trained on region tokens (``train-mil --mem``) to the slide or ``box``.

        The regions' tiles are encoded with the patch encoder the head's tokens came from
        (with ``options``' weights when it is the same encoder) and kept in this session's
        cache. Regions and tiles follow the minimum tissue recorded with the head (else
        ``options``') and ``options``' tissue threshold. Returns None when no region on
        tissue meets the box.

        Raises
        ------
        ValueError
            When the head has no mixing encoder beside it, or another patch encoder is given.
        """
        region_encoder = head.region_encoder
        if region_encoder is None:
            raise ValueError(
                f"MIL head {head.path} was trained on region tokens, but its mixing encoder "
                "(mem_encoder.json beside it, written by train-mil --mem from .mixmag.h5 files) is missing"
            )
        name = region_encoder.patch_encoder
        weights = options.encoder_weights if options.encoder == name else None
        yield Progress("encoder", 0, 1, f"loading encoder {name} for the head's regions")
        encoder = self.encoder(replace(options, encoder=name, encoder_weights=weights))
        min_tissue = options.min_tissue if region_encoder.min_tissue is None else region_encoder.min_tissue
        return (
            yield from attend_regions(
                self.slide,
                head,
                region_encoder,
                encoder,
                box=box,
                tissue=self.tissue(options.tissue_threshold),
                cache=self.cache,
                min_tissue=min_tissue,
                batch_size=options.batch_size,
                cancel=cancel,
            )
        )

    def run_with_mil(
        self,
        options: SegmentOptions,
        box: Box | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        mil_head: MilHead | str | Path | None = None,
        features_path: str | Path | None = None,
    ) -> Generator[Progress, None, MilRun]:
        """Segment, then apply an AB-MIL head (if any) to the same slide or ``box``.

        ``mil_head`` is a loaded head or the path of its checkpoint (loaded here). A head on
        patch features weighs the run's patches; a head trained on region tokens
        (``train-mil --mem``) encodes the regions of the slide (or field) and gives each patch
        its region's attention (all NaN, with no prediction, where no region meets the box).
        ``features_path`` as in :meth:`run`.
        """
        result = yield from self.run(options, box, cancel, features_path)
        if mil_head is None:
            return MilRun(result, None, None)
        if not isinstance(mil_head, MilHead):
            yield Progress("mil", 0, 1, f"loading the MIL head {Path(mil_head).name}")
            mil_head = load_mil_head(mil_head)
        if mil_head.encoder == "mixmag":  # a head on region tokens: regions, then patches
            regions = yield from self.attend_regions(options, mil_head, box, cancel)
            if regions is None:  # zoomed in where no region has enough tissue: the segmentation still shows
                output = MilOutput(
                    np.full(len(result.features), np.nan, np.float32), np.zeros(0, np.float32), ""
                )
            else:
                output = patch_output(regions, result.features.coords, result.features.patch_size_level0)
                yield Progress(
                    "mil", 1, 1, f"MIL predicts {output.predicted} from {regions.n_regions} regions"
                )
        else:
            yield Progress("mil", 0, 1, f"MIL attention over {len(result.features)} patches")
            output = mil_head.apply(result.features.features, encoder=result.features.encoder)
            yield Progress("mil", 1, 1, f"MIL predicts {output.predicted}")
        return MilRun(result, output, mil_head)
