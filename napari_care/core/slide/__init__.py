"""Slides: the :class:`Slide` handle, its lazy pyramid levels, metadata, and the file backends.

>>> from napari_care.core.slide import open_slide
>>> with open_slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
...     tile = slide.read_region((0, 0), 0, (256, 256))

A backend is one ``<name>_backend.py`` module here that registers itself
(:mod:`napari_care.core.slide.backends`).
"""

from napari_care.core.slide.backends import (
    SlideBackend,
    SlideParts,
    register_backend,
    slide_stem,
    slide_suffixes,
)
from napari_care.core.slide.handle import Slide, SlideReadError, open_slide

__all__ = [
    "Slide",
    "SlideBackend",
    "SlideParts",
    "SlideReadError",
    "open_slide",
    "register_backend",
    "slide_stem",
    "slide_suffixes",
]
