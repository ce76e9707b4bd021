"""What every contender of ``bench_peers.py`` shares: the encoders as a peer builds them, the tile subsets.

Imported by ``bench_peers.py`` and, in the peers' own venvs, by ``bench_peers_clam.py`` and
``bench_peers_lazyslide.py``; so it imports numpy only (torch and timm inside the functions
that need them), never napari_care:

- ``default``: napari_care's built-in numpy descriptor, from the copy of its module files
  that ``bench_peers.py`` ships into a folder (``--descriptor-dir``): the same code, so the
  same work per tile;
- ``resnet18``: ``timm.create_model("resnet18", pretrained=False, num_classes=0)`` with
  torch's generator seeded with 0 first, as napari_care builds ``timm:resnet18`` with
  ``weights="random"``; the weights' checksum is reported so the runs can be compared;
- :func:`spread_rows`: the rule that picks a subset of a tile list (runs of neighbouring
  tiles spread evenly over it), the same for napari_care's tiles and LazySlide's own.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np

RESNET_SEED = 0  # napari_care seeds torch with 0 before building a random-weight timm model
RESNET_ARCH = "resnet18"
RUN_TILES = 64  # neighbouring tiles per run of a spread subset


def spread_rows(n_total: int, n_wanted: int, run: int = RUN_TILES) -> np.ndarray:
    """Rows of ``n_wanted`` of ``n_total`` tiles: runs of ``run`` neighbours spread evenly.

    ``n_wanted`` of 0 or at least ``n_total``: every row. Tiles are listed row by row, so a
    run of neighbours shares file tiles, as in a whole-slide run.
    """
    if n_wanted <= 0 or n_wanted >= n_total:
        return np.arange(n_total)
    runs = max(1, -(-n_wanted // run))
    starts = np.linspace(0, n_total - run, runs).astype(np.int64)
    rows = np.unique((starts[:, None] + np.arange(run)).ravel())
    return rows[np.linspace(0, len(rows) - 1, n_wanted).astype(np.int64)] if len(rows) > n_wanted else rows


def load_descriptor(descriptor_dir: Path):
    """The shipped ``DescriptorEncoder`` (package ``napari_care_descriptor`` in ``descriptor_dir``)."""
    sys.path.insert(0, str(descriptor_dir))
    from napari_care_descriptor.descriptor import DescriptorEncoder

    return DescriptorEncoder()


def build_resnet18():
    """timm's resnet18 with seeded random weights, in eval mode, classifier removed."""
    import timm
    import torch

    torch.manual_seed(RESNET_SEED)
    return timm.create_model(RESNET_ARCH, pretrained=False, num_classes=0).eval()


def warm_up_resnet(model, batch_size: int) -> None:
    """One forward pass on zeros before the clock starts (torch's first call sets up its kernels,
    seconds of CPU that napari_care's run, warmed by the bare-forward timing, does not pay)."""
    import torch

    with torch.inference_mode():
        model(torch.zeros(batch_size, 3, 224, 224))


def weights_checksum(model) -> float:
    """Sum of every parameter (float64): equal sums say the contenders built the same weights."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def peak_rss_mib() -> float:
    """Peak resident memory of this process image, MiB.

    ``VmHWM`` of ``/proc/self/status`` (Linux), the high-water mark of this process's own
    memory map: ``ru_maxrss`` would not do for a side started by ``bench_peers.py``, since
    Linux carries it over fork and exec, so a child reports its parent's peak when that is
    higher. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS) as the fallback.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for text in status.read_text().splitlines():
            if text.startswith("VmHWM:"):
                return int(text.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
