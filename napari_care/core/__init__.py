"""The GUI-free core of napari_care: slides, features, models, regions, exchange formats.

Nothing here imports napari, Qt or magicgui. Heavy modules (torch, timm) load only when
the functions that need them are called.
"""

from napari_care.core.progress import Progress, run_to_end
from napari_care.core.slide.handle import Slide, SlideReadError, open_slide

__all__ = ["Progress", "Slide", "SlideReadError", "open_slide", "run_to_end"]
