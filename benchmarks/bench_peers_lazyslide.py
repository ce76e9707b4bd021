"""LazySlide side of ``bench_peers.py``: its tiling and ``feature_extraction``, in its own venv.

Run by ``bench_peers.py`` with the Python of a venv that has ``lazyslide`` (it pins many
packages of its own)::

    /tmp/lazyslide-venv/bin/python benchmarks/bench_peers_lazyslide.py SLIDE OUT.npy \
        --encoder default|resnet18 --descriptor-dir DIR [--corners CORNERS.npy | --subset N]

With ``--corners`` (napari_care's [N, 2] level-0 tile corners) the tiles are napari_care's,
given to LazySlide as a tile table with the ``TileSpec`` of ``tile_tissues(wsi, 224,
mpp=0.5)`` (so it reads them as it reads its own: level 0 at 448 px, ``cv2.INTER_AREA`` to
224); the clock covers ``open_wsi`` and ``feature_extraction``. Without it, LazySlide runs
end to end as its docs show: ``open_wsi``, ``zs.pp.find_tissues``, ``zs.pp.tile_tissues(wsi,
224, mpp=0.5)``, ``zs.tl.feature_extraction``, all timed; with ``--subset N`` only N of its
tiles are encoded (``spread_rows``: runs of 64 neighbours spread evenly, the rule
``bench_peers.py`` applies to napari_care's own tiles). Encoders: ``default`` is the shipped
numpy descriptor given as a callable (tiles stay uint8, LazySlide's ``transform=None``);
``resnet18`` is LazySlide's own ``TimmModel("resnet18", pretrained=False)`` built after
seeding torch with 0, with its own eval transform (timm's: resize to 224 / crop_pct, centre
crop), one forward pass on zeros before the clock. ``feature_extraction``'s defaults
otherwise (batch 32 unless ``--batch-size``, no DataLoader workers unless ``--workers``),
progress bar off. Prints one line of JSON; the features (and the tile corners used) go to
``OUT.npy`` / ``OUT.corners.npy`` after the clock.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_peers_common import load_descriptor, peak_rss_mib, spread_rows, warm_up_resnet, weights_checksum

TILE_PX = 224
MPP = 0.5


def our_tiles(wsi, corners: np.ndarray, key: str) -> None:
    """Add napari_care's tiles to ``wsi`` under ``key``, with the TileSpec LazySlide would use."""
    import geopandas as gpd
    from lazyslide.preprocess._tiles import _add_tiles
    from shapely import box
    from wsidata import TileSpec

    spec = TileSpec.from_wsidata(wsi, tile_px=TILE_PX, mpp=MPP)
    side = spec.base_width
    x, y = corners[:, 0].astype(float), corners[:, 1].astype(float)
    tiles = gpd.GeoDataFrame(
        {"tile_id": np.arange(len(corners)), "tissue_id": np.zeros(len(corners), int)},
        geometry=box(x, y, x + side, y + side),
    )
    _add_tiles(wsi, tiles, spec, key_added=key)


def keep_subset(wsi, key: str, wanted: int) -> None:
    """Keep ``wanted`` of the tiles under ``key`` (``spread_rows``), with their TileSpec."""
    from lazyslide.preprocess._tiles import _add_tiles

    tiles = wsi.shapes[key]
    rows = spread_rows(len(tiles), wanted)
    _add_tiles(wsi, tiles.iloc[rows].reset_index(drop=True), wsi.tile_spec(key), key_added=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("features_out", type=Path)
    parser.add_argument("--encoder", choices=("default", "resnet18"), required=True)
    parser.add_argument("--descriptor-dir", type=Path, required=True)
    parser.add_argument("--corners", type=Path, default=None)
    parser.add_argument("--subset", type=int, default=0, help="encode this many of its own tiles (0: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="feature_extraction's default: 32")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (its default: 0)")
    args = parser.parse_args()

    import lazyslide as zs
    import torch
    import wsidata
    from wsidata import open_wsi

    checksum = None
    if args.encoder == "resnet18":
        from lazyslide_models import TimmModel

        torch.manual_seed(0)
        model = TimmModel("resnet18", pretrained=False)
        checksum = weights_checksum(model.model)
        warm_up_resnet(model.model, args.batch_size)
    else:
        descriptor = load_descriptor(args.descriptor_dir)

        def model(image: torch.Tensor) -> np.ndarray:
            return descriptor.encode(image.numpy())

        model.__name__ = "default"
    corners = np.load(args.corners).astype(np.int64) if args.corners else None
    key = "napari_care_tiles" if corners is not None else "tiles"

    stages = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    wsi = open_wsi(args.slide)
    if corners is not None:
        our_tiles(wsi, corners, key)
    else:
        zs.pp.find_tissues(wsi)
        zs.pp.tile_tissues(wsi, TILE_PX, mpp=MPP)
        stages["own_tiles"] = len(wsi.shapes[key])
        if args.subset:
            keep_subset(wsi, key, args.subset)
    stages["open_and_tiles_s"] = time.perf_counter() - wall0
    features = zs.tl.feature_extraction(
        wsi,
        model,
        device="cpu",
        tile_key=key,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pbar=False,
        return_features=True,
    )
    seconds, cpu_seconds = time.perf_counter() - wall0, time.process_time() - cpu0
    stages["features_s"] = seconds - stages["open_and_tiles_s"]
    bounds = wsi.shapes[key].bounds[["minx", "miny"]].to_numpy().astype(np.int64)
    np.save(args.features_out, np.asarray(features, np.float32))
    np.save(args.features_out.with_suffix(".corners.npy"), bounds)
    spec = wsi.tile_spec(key)
    print(
        json.dumps(
            {
                "tiles": len(features),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "stages": stages,
                "peak_rss_mib": peak_rss_mib(),
                "torch_threads": torch.get_num_threads(),
                "weights_checksum": checksum,
                "reader": type(wsi.reader).__name__,
                "tile_spec": {"ops_level": spec.ops_level, "ops_px": spec.ops_width, "px": spec.width},
                "batch_size": args.batch_size,
                "workers": args.workers,
                "versions": {
                    "lazyslide": zs.__version__,
                    "wsidata": wsidata.__version__,
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
