"""TIAToolbox side of ``bench_extract.py``: its patch extraction, then the project's encoder.

Run by ``bench_extract.py`` with the Python of a separate virtual environment that has
``tiatoolbox`` (it pins its own torch, numpy and zarr, so it stays out of the project's
environment); the repository root is put on ``sys.path`` for the encoder::

    /tmp/tia-venv/bin/python benchmarks/bench_extract_tiatoolbox.py SLIDE CORNERS.npy \
        --tile-size 224 --mpp 0.5 --batch-size 64 [--no-encode]

``CORNERS.npy`` holds [N, 2] level-0 (x, y) tile corners (the project's grid, so the tiles
are the same). TIAToolbox's ``PointsPatchExtractor`` is given the tiles' centres at the
target resolution and iterated the way its docs show (one ``read_rect`` per patch, one
thread); batches go to the ``default`` encoder. Prints one line of JSON: seconds, CPU
seconds, tiles, peak RSS, the reader class and the TIAToolbox version.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("corners", type=Path, help=".npy of [N, 2] level-0 (x, y) tile corners")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--level0-mpp", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--no-encode", action="store_true", help="extract patches only")
    args = parser.parse_args()

    import tiatoolbox
    from tiatoolbox.tools.patchextraction import get_patch_extractor

    sys.path.insert(0, str(REPO))
    from napari_care.core.encoders import create_encoder

    encoder = None if args.no_encode else create_encoder(args.encoder, weights=args.weights)
    corners = np.load(args.corners).astype(np.float64)
    # PointsPatchExtractor takes centres in the pixels of the requested resolution and
    # starts each patch at centre - (size - 1) // 2.
    scale = args.level0_mpp / args.mpp
    centres = np.rint(corners * scale).astype(np.int64) + (args.tile_size - 1) // 2
    extractor = get_patch_extractor(
        "point",
        input_img=str(args.slide),
        locations_list=centres,
        patch_size=(args.tile_size, args.tile_size),
        resolution=args.mpp,
        units="mpp",
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    batch, count, checksum = [], 0, 0.0
    for patch in extractor:
        batch.append(patch[..., :3])
        if len(batch) == args.batch_size:
            tiles = np.stack(batch)
            checksum += float(encoder.encode(tiles).sum()) if encoder else float(tiles[:, 0, 0].sum())
            count += len(batch)
            batch = []
    if batch:
        tiles = np.stack(batch)
        checksum += float(encoder.encode(tiles).sum()) if encoder else float(tiles[:, 0, 0].sum())
        count += len(batch)
    result = {
        "seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "tiles": count,
        "reader": type(extractor.wsi).__name__,
        "version": tiatoolbox.__version__,
        "checksum": checksum,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
