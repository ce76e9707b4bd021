"""napari_care: whole-slide images, adaptive tissue regions (CARE) and attention in napari.

Importing the package is cheap on purpose: no torch, no Qt, no napari. The science lives
in :mod:`napari_care.core`; the napari boundary lives in the private ``_*`` modules.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
