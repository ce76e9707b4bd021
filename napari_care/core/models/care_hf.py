"""The authors' CARE model (Hugging Face ``Zipper-1/CARE``) as a slide encoder.

The published model is gated (CC-BY-NC-4.0) and ships its own model code, loaded with
``transformers.AutoModel.from_pretrained(..., trust_remote_code=True)``. It takes CONCH v1.5
features of 512-px tiles at 20x and is called as ``model(features [1, N, 768] float,
n_values [1] float = N, grid [1, N, 2] long = level-0 coords // level-0 patch size)``; its
output's ``wsi_embedding`` is the ``[1, 512]`` slide embedding (TRIDENT's ``CARESlideEncoder``
does the same). The documented output carries that and ``aux_loss`` only: no per-patch or
per-region weights, so the regions, heatmap and ROI of a run with this model come from the
training-free generator and only the slide embedding is the model's.

A ``--care`` value names it in one of two ways (:func:`parse_care_source`):

- ``hf:<owner>/<name>`` (``hf:Zipper-1/CARE``): a snapshot in the local Hugging Face cache
  (``HF_HUB_CACHE`` / ``HF_HOME``); when it is not there it is downloaded, unless
  ``HF_HUB_OFFLINE`` is set;
- a folder holding a snapshot of that repository (``config.json`` whose ``auto_map`` names
  a CARE class, the model code and the weights).

Anything else is a napari_care checkpoint (:mod:`napari_care.core.checkpoint`). Loading runs
the snapshot's own Python code: give only snapshots you trust. torch, transformers and
huggingface_hub are imported only when a snapshot is looked up or loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HF_PREFIX = "hf:"
#: The authors' repository on the Hugging Face hub.
CARE_HF_ID = "Zipper-1/CARE"
#: What the model takes: CONCH v1.5 patch features (768-d) of 512-px tiles at 20x.
CARE_IN_DIM = 768
CARE_PATCH_SIZE_PX = 512
CARE_MAGNIFICATION = 20.0
#: Width of the model's slide embedding (``wsi_embedding``).
CARE_EMBED_DIM = 512
#: Relative tolerance on the tiles' micrometres per pixel (scanners' "20x" is 0.45-0.55 um/px).
MPP_TOLERANCE = 0.1
INSTALL_HINT = "pip install 'napari-care[care]'"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class HfCareError(ValueError):
    """The CARE model named by ``--care`` cannot be used; the message names the id or folder and the fix."""


@dataclass(frozen=True)
class HfCareSource:
    """Where the authors' CARE model comes from.

    Attributes
    ----------
    text
        The ``--care`` value as given.
    repo_id
        ``"owner/name"`` of a hub repository (``hf:`` values), else None.
    folder
        A local snapshot folder (folder values), else None.
    """

    text: str
    repo_id: str | None = None
    folder: Path | None = None

    @property
    def label(self) -> str:
        """The source as the user wrote it, for messages."""
        return f"{HF_PREFIX}{self.repo_id}" if self.repo_id else str(self.folder)

    @property
    def name(self) -> str:
        """The model's name: the hub id, or :data:`CARE_HF_ID` for a snapshot folder."""
        return self.repo_id or CARE_HF_ID


def parse_care_source(value: str | os.PathLike[str]) -> HfCareSource | None:
    """The Hugging Face CARE source ``value`` names, or None for a napari_care checkpoint.

    Cheap: no import of torch or transformers; a folder's ``config.json`` is read.

    Parameters
    ----------
    value
        ``hf:<owner>/<name>``, a snapshot folder, or a napari_care checkpoint path.

    Raises
    ------
    HfCareError
        An ``hf:`` value that is not ``owner/name``, or a folder whose ``config.json`` is
        unreadable or describes another model.
    """
    text = os.fspath(value)
    if text.startswith(HF_PREFIX):
        repo_id = text[len(HF_PREFIX) :].strip().strip("/")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise HfCareError(
                f"--care {text}: not a Hugging Face repository id; "
                f"give hf:<owner>/<name>, e.g. hf:{CARE_HF_ID}"
            )
        return HfCareSource(text, repo_id=repo_id)
    folder = Path(text).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        check_care_config(folder / "config.json", label=str(folder))
        return HfCareSource(text, folder=folder)
    return None


def check_care_config(config_path: Path, *, label: str) -> dict[str, Any]:
    """Read a snapshot's ``config.json`` and check that its ``auto_map`` names a CARE model class.

    Raises
    ------
    HfCareError
        Unreadable JSON, no ``auto_map`` entry for ``AutoModel``, or classes of another model.
    """
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise HfCareError(f"--care {label}: {config_path} is not a readable config.json ({error})") from None
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    if "AutoModel" not in auto_map:
        raise HfCareError(
            f"--care {label}: {config_path} has no auto_map entry for AutoModel, so it is not a snapshot "
            f"of huggingface.co/{CARE_HF_ID} (which ships its model code); give that snapshot's folder, "
            f"hf:{CARE_HF_ID}, or a napari_care checkpoint"
        )
    entries = auto_map["AutoModel"]
    names = [str(entry) for entry in (entries if isinstance(entries, list) else [entries])]
    names += [str(name) for name in config.get("architectures") or []]
    if not any("care" in name.rpartition(".")[2].lower() for name in names):
        raise HfCareError(
            f"--care {label}: {config_path} describes the model {', '.join(names)}, not CARE; "
            f"give a snapshot of huggingface.co/{CARE_HF_ID}, hf:{CARE_HF_ID}, or a napari_care checkpoint"
        )
    return config


def check_care_features(
    label: str,
    *,
    embed_dim: int | None,
    patch_size_px: int | None = None,
    mpp: float | None = None,
    encoder: str | None = None,
    where: str = "the features",
) -> None:
    """Check that patch features fit the model: 768-d, of 512-px tiles at 20x (0.5 um/px).

    Cheap (no model is loaded), so the checks before a run and the run itself share it.

    Parameters
    ----------
    label
        The ``--care`` value, for messages.
    embed_dim
        Width of the patch features; None skips that check.
    patch_size_px, mpp
        Tile side at the target resolution and its micrometres per pixel; None skips that check.
    encoder
        Name of the patch encoder, for messages.
    where
        What the features are ("the features of slide.h5", "--encoder uni"), for messages.

    Raises
    ------
    HfCareError
        Naming what the features have and what CARE takes (``--encoder conch_v15``).
    """
    made_by = f" (encoder {encoder})" if encoder else ""
    if embed_dim is not None and int(embed_dim) != CARE_IN_DIM:
        raise HfCareError(
            f"--care {label}: CARE takes {CARE_IN_DIM}-d CONCH v1.5 patch features but {where}{made_by} "
            f"are {int(embed_dim)}-d; extract them with --encoder conch_v15"
        )
    wrong_side = patch_size_px is not None and int(patch_size_px) != CARE_PATCH_SIZE_PX
    care_mpp = 10.0 / CARE_MAGNIFICATION
    wrong_mpp = mpp is not None and not math.isclose(float(mpp), care_mpp, rel_tol=MPP_TOLERANCE)
    if wrong_side or wrong_mpp:
        side = f"{int(patch_size_px)}-px tiles" if patch_size_px is not None else "tiles"
        scale = f" at {10.0 / float(mpp):.3g}x ({float(mpp):.3g} um/px)" if mpp is not None else ""
        raise HfCareError(
            f"--care {label}: CARE takes features of {CARE_PATCH_SIZE_PX}-px tiles at "
            f"{CARE_MAGNIFICATION:g}x ({care_mpp:g} um/px) but {where}{made_by} are of {side}{scale}; "
            "extract them with --encoder conch_v15 and its defaults (512-px tiles at 20x)"
        )


def model_grid(coords_level0: np.ndarray, patch_size_level0: float) -> np.ndarray:
    """The model's ``grid``: ``[N, 2]`` int64 ``floor(coords / patch_size_level0)``.

    TRIDENT's ``coords // patch_size``; patches on any origin (not only multiples of the
    patch side) land in the cell their top-left corner is in.
    """
    if not float(patch_size_level0) > 0:
        raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0}")
    coords = np.asarray(coords_level0)
    return np.floor_divide(coords, float(patch_size_level0)).astype(np.int64)


def _require_transformers(label: str) -> None:
    try:
        import transformers  # noqa: F401  # lazy: optional extra, heavy
    except ImportError:
        raise HfCareError(
            f"--care {label}: the CARE model needs the transformers package; {INSTALL_HINT}"
        ) from None


def _how_to_get(repo_id: str) -> str:
    return (
        f"the weights are gated: accept the licence at https://huggingface.co/{repo_id}, then on a machine "
        f"with network run `hf auth login` and `hf download {repo_id}` (huggingface-cli with older "
        "huggingface_hub) and copy its cache here (HF_HOME / HF_HUB_CACHE), or run "
        f"`hf download {repo_id} --local-dir DIR` and pass --care DIR"
    )


def _check_weights(folder: Path, label: str, repo_id: str) -> None:
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise HfCareError(
            f"--care {label}: the snapshot {folder} has a config.json but no weights (model.safetensors or "
            f"pytorch_model.bin): it is incomplete; {_how_to_get(repo_id)}"
        )


def resolve_snapshot(source: HfCareSource) -> Path:
    """The snapshot folder of ``source``: the folder itself, or the hub repository's in the local cache.

    A hub repository missing from the cache is downloaded unless ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set. The folder's ``config.json`` and weights are checked.

    Raises
    ------
    HfCareError
        transformers missing, the snapshot missing (with how to get it), incomplete or of another model.
    """
    _require_transformers(source.label)
    if source.folder is not None:
        _check_weights(source.folder, source.label, CARE_HF_ID)
        return source.folder
    repo_id = str(source.repo_id)
    from huggingface_hub import try_to_load_from_cache  # lazy: comes with transformers

    from napari_care.core.encoders.weights import hub_cache_dir, hub_offline  # lazy: torch

    cache = hub_cache_dir()  # read from the environment now, not when huggingface_hub was imported
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if isinstance(found, str):
        folder = Path(found).parent
    elif hub_offline():
        raise HfCareError(
            f"--care {source.label}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set, so "
            f"nothing is downloaded; {_how_to_get(repo_id)}"
        )
    else:
        folder = _download(repo_id, cache, source.label)
    check_care_config(folder / "config.json", label=source.label)
    _check_weights(folder, source.label, repo_id)
    return folder


def _download(repo_id: str, cache: Path, label: str) -> Path:
    from huggingface_hub import snapshot_download  # lazy: comes with transformers

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache))
    except Exception as error:  # gated, not found, no network: the hub raises many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise HfCareError(
            f"--care {label}: could not download {repo_id} into {cache} ({type(error).__name__}: {reason}); "
            f"{_how_to_get(repo_id)}"
        ) from None


def care_source_fingerprint(source: HfCareSource) -> str:
    """What identifies the model's weights and code, for a rerun's settings comparison.

    ``"<repo id>@<revision>"`` for a cached hub snapshot (the revision is the snapshot
    folder's name, the commit hash), else the SHA-256 of the folder's ``config.json``,
    Python files and weights.
    """
    folder = resolve_snapshot(source)
    if source.repo_id is not None:
        return f"{source.repo_id}@{folder.name}"
    digest = hashlib.sha256()
    files = sorted(
        {path for pattern in ("config.json", "*.py", *_WEIGHT_PATTERNS) for path in folder.glob(pattern)}
    )
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class HfCareEncoder:
    """The authors' CARE model, loaded, as a slide encoder: patch features in, a slide embedding out.

    Built by :func:`load_hf_care`. The model runs in eval mode, without gradients, in float32.

    Attributes
    ----------
    source
        Where it came from (:class:`HfCareSource`).
    name
        ``"Zipper-1/CARE"`` (the hub id of an ``hf:`` source).
    snapshot
        The folder the model was loaded from.
    model
        The ``transformers`` model (the snapshot's own class).
    device
        The torch device it runs on.
    in_dim, patch_size_px, magnification, embed_dim
        What it takes and gives: 768-d features of 512-px tiles at 20x, a 512-d embedding.
    """

    in_dim = CARE_IN_DIM
    patch_size_px = CARE_PATCH_SIZE_PX
    magnification = CARE_MAGNIFICATION
    embed_dim = CARE_EMBED_DIM

    def __init__(self, model: Any, source: HfCareSource, snapshot: Path, device: Any) -> None:
        self.model = model
        self.source = source
        self.snapshot = snapshot
        self.device = device
        self.name = source.name

    def __repr__(self) -> str:
        snapshot, device = str(self.snapshot), str(self.device)
        return f"HfCareEncoder({self.source.label!r}, snapshot={snapshot!r}, device={device!r})"

    def check_features(
        self,
        *,
        embed_dim: int,
        patch_size_px: int | None = None,
        mpp: float | None = None,
        encoder: str | None = None,
        where: str = "the features",
    ) -> None:
        """:func:`check_care_features` for this model."""
        check_care_features(
            self.source.label,
            embed_dim=embed_dim,
            patch_size_px=patch_size_px,
            mpp=mpp,
            encoder=encoder,
            where=where,
        )

    def embed(self, features: np.ndarray, coords_level0: np.ndarray, patch_size_level0: float) -> np.ndarray:
        """The slide embedding of one slide's patch features.

        Parameters
        ----------
        features
            ``[N, 768]`` CONCH v1.5 patch features.
        coords_level0
            ``[N, 2]`` level-0 (x, y) of each patch's top-left corner.
        patch_size_level0
            Patch side in level-0 pixels; the model's grid is ``coords // patch_size_level0``.

        Returns
        -------
        numpy.ndarray
            ``[E]`` float32 ``wsi_embedding`` (E = 512).

        Raises
        ------
        HfCareError
            Features of another width, no patches, or an output without ``wsi_embedding``.
        """
        import torch  # lazy: only a loaded model runs

        features = np.asarray(features, dtype=np.float32)
        coords = np.asarray(coords_level0)
        if features.ndim != 2 or len(features) == 0:
            raise HfCareError(
                f"--care {self.source.label}: needs [N, {self.in_dim}] patch features, got {features.shape}"
            )
        self.check_features(embed_dim=features.shape[1])
        if coords.shape != (len(features), 2):
            raise ValueError(f"coords_level0 has shape {coords.shape}, expected ({len(features)}, 2)")
        grid = model_grid(coords, patch_size_level0)
        with torch.inference_mode():
            output = self.model(
                torch.from_numpy(features).to(self.device).unsqueeze(0),
                torch.tensor([float(len(features))], dtype=torch.float32, device=self.device),
                torch.from_numpy(grid).to(self.device).unsqueeze(0),
            )
        embedding = (
            output.get("wsi_embedding")
            if isinstance(output, dict)
            else getattr(output, "wsi_embedding", None)
        )
        if embedding is None:
            raise HfCareError(
                f"--care {self.source.label}: the model's output ({type(output).__name__}) has no "
                f"wsi_embedding; is {self.snapshot} a snapshot of huggingface.co/{CARE_HF_ID}?"
            )
        embedding = embedding.detach().float().cpu().numpy()
        if embedding.ndim == 2 and embedding.shape[0] == 1:
            embedding = embedding[0]
        if embedding.ndim != 1:
            raise HfCareError(
                f"--care {self.source.label}: wsi_embedding has shape {tuple(embedding.shape)}, "
                "expected [1, E]"
            )
        return np.ascontiguousarray(embedding, dtype=np.float32)


def load_hf_care(
    source: str | os.PathLike[str] | HfCareSource, *, device: str | None = None
) -> HfCareEncoder:
    """Load the authors' CARE model from the Hugging Face cache or a snapshot folder.

    Parameters
    ----------
    source
        ``hf:<owner>/<name>``, a snapshot folder, or a parsed :class:`HfCareSource`.
    device
        Torch device; None chooses CUDA, then MPS, then the CPU.

    Returns
    -------
    HfCareEncoder

    Raises
    ------
    HfCareError
        transformers missing, the snapshot missing or incomplete, another model, or its code
        failing to load; each message names the id or folder and the fix.
    """
    parsed = source if isinstance(source, HfCareSource) else parse_care_source(source)
    if parsed is None:
        raise HfCareError(
            f"--care {os.fspath(source)}: neither hf:<owner>/<name> nor a folder with a config.json "  # type: ignore[arg-type]
            f"(a snapshot of huggingface.co/{CARE_HF_ID})"
        )
    folder = resolve_snapshot(parsed)
    from transformers import AutoModel  # lazy: optional extra, heavy

    from napari_care.core.encoders.device import pick_device  # lazy: torch

    chosen = pick_device(device)
    try:
        model = AutoModel.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    except Exception as error:  # the snapshot's own code may raise anything
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        missing = error.name if isinstance(error, ImportError) and error.name else ""
        hint = (
            f"; pip install {missing}" if missing and not missing.startswith("transformers_modules") else ""
        )
        raise HfCareError(
            f"--care {parsed.label}: the model in {folder} could not be loaded "
            f"({type(error).__name__}: {reason}){hint}"
        ) from None
    model = model.to(chosen).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return HfCareEncoder(model, parsed, folder, chosen)
