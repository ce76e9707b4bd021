"""The slide backends: who reads which files, tried in which order, and slide file names.

A backend is one module of this package named ``<name>_backend.py`` that calls
:func:`register_backend` when it is imported; the registry finds those modules itself the
first time it is asked, so adding a backend edits no list. Keep a backend module cheap to
import: its file library (tifffile, openslide, ...) loads inside its opener, when a slide of
its kind opens.

>>> [backend.name for backend in backends_for(Path("CMU-1.mrxs"))]  # doctest: +SKIP
['openslide', 'tifffile']
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_care.core.slide.levels import TileSource
from napari_care.core.slide.meta import Calibration

BACKEND_MODULE_SUFFIX = "_backend"
MULTI_PART_SUFFIXES = (".ome.tiff", ".ome.tif")  # suffixes of two parts, both part of the format's name

_REGISTRY: dict[str, SlideBackend] = {}
_discovery_lock = threading.RLock()  # a backend module may ask the registry while it loads
_discovered = False


@dataclass(frozen=True)
class SlideParts:
    """What a backend found in a file; :func:`~napari_care.core.slide.open_slide` makes the Slide of it.

    Attributes
    ----------
    sources : list of TileSource
        One tile source per file level, largest first.
    calibration : Calibration
        Pixel size, where it came from, and objective power.
    vendor : str
        The format family (``"aperio"``, ``"generic-tiff"``, or the library's vendor name).
    properties : dict of str
        The file's own metadata fields.
    associated : mapping of str to callable
        Loaders of the label, macro and thumbnail images (RGB uint8), by name.
    on_close : list of callable
        What releases the file, called when the slide closes.
    bounds_offset : (int, int)
        Level-0 (x, y) of the scanned area's corner.
    """

    sources: list[TileSource]
    calibration: Calibration
    vendor: str
    properties: dict[str, str]
    associated: Mapping[str, Callable[[], np.ndarray]]
    on_close: list[Callable[[], None]]
    bounds_offset: tuple[int, int] = (0, 0)


Opener = Callable[[Path, tuple[float, float] | None], SlideParts]


@dataclass(frozen=True)
class SlideBackend:
    """A way of reading slide files.

    Attributes
    ----------
    name : str
        What :attr:`Slide.backend <napari_care.core.slide.Slide>` reports (``"tifffile"``).
    suffixes : tuple of str
        Lower-case suffixes (``".svs"``) of the files this backend is tried first for;
        together they are the suffixes the napari reader claims.
    open : callable
        ``open(path, user_mpp) -> SlideParts``; ``user_mpp`` is the (x, y) micrometres per
        pixel the user gave, or None. Any exception passes the file on to the next backend
        (its message becomes part of the final error).
    sniff : callable or None
        ``sniff(path) -> bool``, a cheap look at the file's content (its first bytes). When
        given, a file with one of ``suffixes`` goes to this backend first only if the sniff
        agrees, and a file of any other suffix goes to it before the fallbacks if it does.
    rank : int
        Order among backends of equal claim, lowest first (the fallback order).
    label : str or None
        How reasons for a failure name the backend; ``name`` when None.
    """

    name: str
    suffixes: tuple[str, ...]
    open: Opener
    sniff: Callable[[Path], bool] | None = None
    rank: int = 100
    label: str | None = None

    @property
    def reason_label(self) -> str:
        """The name failure reasons give this backend."""
        return self.label or self.name


def register_backend(backend: SlideBackend) -> SlideBackend:
    """Add a slide backend; a ``<name>_backend`` module calls this when it is imported.

    Parameters
    ----------
    backend
        The backend; its suffixes must be lower case and start with a dot.

    Returns
    -------
    SlideBackend
        ``backend``, unchanged.

    Raises
    ------
    ValueError
        When another backend of that name is registered, or a suffix is malformed.
    """
    bad = [suffix for suffix in backend.suffixes if not suffix.startswith(".") or suffix != suffix.lower()]
    if bad:
        raise ValueError(
            f"slide backend {backend.name!r}: suffixes must be lower case and start with '.': {bad}"
        )
    if backend.name in _REGISTRY:
        raise ValueError(f"a slide backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def discover_backends() -> None:
    """Import every ``*_backend`` module of this package not imported yet (each registers itself)."""
    package = sys.modules[__package__]  # this module's package, imported before any of its modules
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith(BACKEND_MODULE_SUFFIX):
            importlib.import_module(f"{__package__}.{module.name}")


def registered_backends() -> list[SlideBackend]:
    """The slide backends, in fallback order (``rank``, then name).

    Returns
    -------
    list of SlideBackend
        Every registered backend; the package's own are found on the first call.
    """
    global _discovered
    if not _discovered:
        with _discovery_lock:  # two reader threads must not import a backend module half-way
            if not _discovered:
                discover_backends()
                _discovered = True
    return sorted(_REGISTRY.values(), key=lambda backend: (backend.rank, backend.name))


def get_backend(name: str) -> SlideBackend:
    """The registered backend called ``name``.

    Raises
    ------
    KeyError
        When there is none; the message lists those there are.
    """
    backends = {backend.name: backend for backend in registered_backends()}
    if name not in backends:
        raise KeyError(f"no slide backend {name!r} (registered: {', '.join(backends) or 'none'})")
    return backends[name]


def backends_for(path: Path) -> list[SlideBackend]:
    """The backends to try on ``path``, in order.

    First those that list the file's suffix (and whose sniff, if any, agrees), then those
    whose sniff recognises the content, then the rest; each group in fallback order.

    Parameters
    ----------
    path
        An existing file or folder.

    Returns
    -------
    list of SlideBackend
        Every registered backend, the most likely reader first.
    """
    suffix = path.suffix.lower()
    ranked = registered_backends()
    named = [b for b in ranked if suffix in b.suffixes and (b.sniff is None or b.sniff(path))]
    rest = [b for b in ranked if b not in named]
    if len(rest) > 1:  # read the file only where its content can still change the order
        rest.sort(key=lambda b: not (b.sniff is not None and b.sniff(path)))  # stable: rank order kept
    return named + rest


def slide_suffixes() -> tuple[str, ...]:
    """Every suffix some backend reads first, once each, in fallback order of the backends.

    Returns
    -------
    tuple of str
        Lower-case suffixes with their dot (``".svs"``); the napari reader's file patterns.
    """
    return tuple(dict.fromkeys(suffix for backend in registered_backends() for suffix in backend.suffixes))


def slide_stem(path: str | Path) -> str:
    """A slide's file name without its suffix (``a.svs`` -> ``a``, ``a.ome.tif`` -> ``a``).

    Parameters
    ----------
    path
        The slide file.

    Returns
    -------
    str
        The name outputs of the slide are named after: ``Path.stem``, except that the
        two-part OME-TIFF suffixes (any case) go whole.
    """
    path = Path(path)
    name = path.name
    for suffix in MULTI_PART_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
