"""State kept between runs on one slide, so that reruns and new views cost only new work.

A :class:`SegmentSession` remembers the tissue mask (per threshold), the encoders and CARE
models it built, and a feature cache: panning the visible field encodes only the tiles
that came into view. The widget keeps one per slide; scripts may too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

from napari_care.core.feature_cache import FeatureCache
from napari_care.core.progress import Progress
from napari_care.core.segment import (
    Box,
    SegmentOptions,
    SegmentResult,
    build_encoder,
    load_care_model,
    segment,
)
from napari_care.core.slide import Slide
from napari_care.core.tissue import TissueMask, tissue_mask


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
        key = (options.care_checkpoint, in_dim)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_care_model(options.care_checkpoint, in_dim=in_dim)
            return self._models[key]

    def run(
        self,
        options: SegmentOptions,
        box: Box | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> Generator[Progress, None, SegmentResult]:
        """Segment the slide (or ``box``), reusing everything earlier runs made."""
        yield Progress("tissue", 0, 1, "finding tissue")
        tissue = self.tissue(options.tissue_threshold)
        yield Progress("encoder", 0, 1, f"loading encoder {options.encoder}")
        encoder = self.encoder(options)
        model = self.model(options, encoder.embed_dim)
        return (yield from segment(self.slide, options, box=box, tissue=tissue, cache=self.cache,
                                   encoder=encoder, model=model, cancel=cancel))
