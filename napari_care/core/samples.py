"""Sample slides: the offline synthetic sample (built once, cached) and CMU-1-Small-Region.

The offline sample is built from ``sample_data/offline_sample.json`` (the arguments of
:func:`~napari_care.core.synthetic.slides.build_synthetic_slide`) into the user's cache folder.
Its file name carries a hash of the generator version and the spec, so a changed
generator or spec builds a new sample instead of reusing a stale one. Set the environment
variable ``NAPARI_CARE_CACHE`` to use another cache folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari_care.core.progress import Progress, run_to_end
from napari_care.core.synthetic.slides import (
    GENERATOR_VERSION,
    build_synthetic_slide,
    iter_build_synthetic_slide,
    truth_path_for,
)
from napari_care.core.synthetic.textures import StainPalette

CACHE_ENV = "NAPARI_CARE_CACHE"
# The spec lives beside the package in a source checkout; an installed package without it
# builds from build_synthetic_slide's defaults, which a test keeps equal to the spec.
OFFLINE_SAMPLE_SPEC = Path(__file__).resolve().parents[2] / "sample_data" / "offline_sample.json"
CMU_SMALL_REGION_URL = (
    "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"
)
CMU_SMALL_REGION_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"

_build_lock = threading.Lock()  # one build per process; other processes rely on atomic renames


def cache_dir() -> Path:
    """The folder for built and downloaded samples: ``$NAPARI_CARE_CACHE`` or the user cache."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import pooch  # the download client only when a download is needed

    return Path(pooch.os_cache("napari_care"))


def build_defaults() -> dict[str, Any]:
    """The keyword defaults of :func:`build_synthetic_slide` that a spec may set (palette as a dict)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(build_synthetic_slide).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name != "workers"
    }
    defaults["palette"] = dataclasses.asdict(defaults["palette"])
    return defaults


def load_sample_spec(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a sample spec (JSON) over the builder's defaults; all keys, palette as a dict.

    Parameters
    ----------
    path
        The JSON spec; the default is ``sample_data/offline_sample.json`` when it exists.
        Keys starting with ``_`` are comments.
    """
    spec = build_defaults()
    path = OFFLINE_SAMPLE_SPEC if path is None else Path(path)
    if not path.is_file():
        if path == OFFLINE_SAMPLE_SPEC:
            return spec
        raise FileNotFoundError(f"{path}: sample spec not found")
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    given = {key: value for key, value in given.items() if not key.startswith("_")}
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(f"{path}: unknown spec keys {unknown}; known: {sorted(spec)}")
    palette = {**spec["palette"], **given.pop("palette", {})}
    spec.update(given)
    spec["palette"] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in palette.items()
    }
    return spec


def spec_key(spec: dict[str, Any]) -> str:
    """A short hash of the generator version and the spec: it names the cached sample."""
    text = json.dumps({"generator": GENERATOR_VERSION, "spec": spec}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def iter_offline_sample(
    *,
    rebuild: bool = False,
    spec_path: str | os.PathLike[str] | None = None,
) -> Generator[Progress, None, Path]:
    """Build the offline sample into the cache unless it is there; yields progress, returns its path.

    Parameters
    ----------
    rebuild
        Build again even when a cached copy exists.
    spec_path
        Another spec than ``sample_data/offline_sample.json``.
    """
    spec = load_sample_spec(spec_path)
    path = cache_dir() / "samples" / f"offline_sample-{spec_key(spec)}.ome.tif"
    with _build_lock:
        # The truth file is written before the slide, so a present slide has its truth.
        if rebuild or not (path.is_file() and truth_path_for(path).is_file()):
            arguments = {**spec, "palette": StainPalette(**spec["palette"])}
            yield from iter_build_synthetic_slide(path, **arguments)
    return path


def offline_sample_path(*, rebuild: bool = False) -> Path:
    """The offline sample slide (a synthetic H&E OME-TIFF with ground truth), built once.

    The first call builds it into ``<cache>/samples/`` (about 10 to 30 s); later calls return
    the cached file. Concurrent callers are safe: files are written under temporary names
    and renamed into place.

    Parameters
    ----------
    rebuild
        Build again even when a cached copy exists.

    Returns
    -------
    Path of the ``.ome.tif``; its ground truth is the ``.truth.npz`` beside it (see
    :func:`~napari_care.core.synthetic.slides.load_synthetic_slide`).
    """
    return run_to_end(iter_offline_sample(rebuild=rebuild))


def cmu_small_region_path(*, url: str = CMU_SMALL_REGION_URL) -> Path:
    """CMU-1-Small-Region.svs (OpenSlide test data, CC0), downloaded once and checksum-verified.

    Parameters
    ----------
    url
        Where to download it from.

    Raises
    ------
    RuntimeError
        When the file is not cached and cannot be downloaded (no network, or a bad checksum).
    """
    import pooch  # the download client only when a download is needed

    folder = cache_dir() / "downloads"
    name = "CMU-1-Small-Region.svs"
    try:
        return Path(
            pooch.retrieve(
                url,
                known_hash=f"sha256:{CMU_SMALL_REGION_SHA256}",
                fname=name,
                path=folder,
                progressbar=False,
            )
        )
    except Exception as error:  # requests' network errors, a checksum mismatch, a full disk
        raise RuntimeError(
            f"Could not download {name} from {url} ({type(error).__name__}); "
            f"connect to the internet, or put the file at {folder / name}"
        ) from error
