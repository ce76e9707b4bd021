"""CLAM-style side of ``bench_peers.py``: OpenSlide + a torch DataLoader, as CLAM's extract_features_fp.

Run by ``bench_peers.py`` with the Python of its own venv (openslide-python, openslide-bin,
torch, torchvision, timm, h5py)::

    /tmp/clam-venv/bin/python benchmarks/bench_peers_clam.py SLIDE CORNERS.npy OUT.npy \
        --encoder default|resnet18 --descriptor-dir DIR --read-px 448 --tile-px 224

``CORNERS.npy`` holds [N, 2] level-0 (x, y) tile corners (napari_care's grid, so the tiles
are the same; CLAM's own patching step, create_patches_fp, is not timed). What CLAM does
per tile (``Whole_Slide_Bag_FP``): ``read_region`` of ``--read-px`` at level 0,
``convert("RGB")``, then its eval transform: ``Resize(224)`` (torchvision, bilinear,
antialiased) for ``resnet18``, followed by ToTensor + Normalize (ImageNet); for ``default``
the resized tile stays uint8 (the descriptor takes pixels). A ``DataLoader`` with CLAM's
CPU settings (no workers, no pinned memory), the model under ``inference_mode``, and each
batch's features and coordinates appended to an HDF5 file (CLAM's ``save_hdf5``). The
network makes one forward pass on zeros before the clock starts (torch's first-call setup).
Prints one line of JSON; the features go to ``OUT.npy`` after the clock stops.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import torch
from bench_peers_common import build_resnet18, load_descriptor, peak_rss_mib, warm_up_resnet, weights_checksum
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WholeSlideBag(Dataset):
    """CLAM's ``Whole_Slide_Bag_FP``: one ``read_region`` per coordinate, then the transform."""

    def __init__(self, slide: openslide.OpenSlide, corners: np.ndarray, read_px: int, transform) -> None:
        self.wsi = slide
        self.coords = corners
        self.read_px = read_px
        self.transform = transform

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, idx: int) -> dict:
        x, y = (int(v) for v in self.coords[idx])
        img = self.wsi.read_region((x, y), 0, (self.read_px, self.read_px)).convert("RGB")
        return {"img": self.transform(img), "coord": self.coords[idx]}


def save_hdf5(path: Path, assets: dict[str, np.ndarray], mode: str) -> None:
    """CLAM's ``save_hdf5``: create resizable datasets, then append along the first axis."""
    with h5py.File(path, mode) as file:
        for key, value in assets.items():
            if key not in file:
                file.create_dataset(
                    key, data=value, maxshape=(None, *value.shape[1:]), chunks=(1, *value.shape[1:])
                )
            else:
                dataset = file[key]
                dataset.resize(len(dataset) + len(value), axis=0)
                dataset[-len(value) :] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("corners", type=Path)
    parser.add_argument("features_out", type=Path)
    parser.add_argument("--encoder", choices=("default", "resnet18"), required=True)
    parser.add_argument("--descriptor-dir", type=Path, required=True)
    parser.add_argument("--read-px", type=int, default=448)
    parser.add_argument("--tile-px", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    corners = np.load(args.corners).astype(np.int64)
    resize = transforms.Resize(args.tile_px)  # CLAM's get_eval_transforms(target_img_size=224)
    if args.encoder == "resnet18":
        model = build_resnet18()
        checksum = weights_checksum(model)
        warm_up_resnet(model, args.batch_size)
        transform = transforms.Compose(
            [resize, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

        def encode(batch: torch.Tensor) -> np.ndarray:
            return model(batch).cpu().numpy().astype(np.float32)

    else:
        descriptor = load_descriptor(args.descriptor_dir)
        checksum = None
        transform = transforms.Compose([resize, np.asarray])

        def encode(batch: torch.Tensor) -> np.ndarray:
            return descriptor.encode(batch.numpy())

    features = []
    with tempfile.TemporaryDirectory() as scratch:
        h5_path = Path(scratch) / "features.h5"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        slide = openslide.OpenSlide(str(args.slide))
        loader = DataLoader(
            WholeSlideBag(slide, corners, args.read_px, transform), batch_size=args.batch_size
        )
        mode = "w"
        for data in loader:
            with torch.inference_mode():
                batch_features = encode(data["img"])
            save_hdf5(h5_path, {"features": batch_features, "coords": data["coord"].numpy()}, mode)
            mode = "a"
            features.append(batch_features)
        slide.close()
        seconds, cpu_seconds = time.perf_counter() - wall0, time.process_time() - cpu0
    np.save(args.features_out, np.concatenate(features))
    print(
        json.dumps(
            {
                "tiles": len(corners),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_rss_mib": peak_rss_mib(),
                "torch_threads": torch.get_num_threads(),
                "weights_checksum": checksum,
                "versions": {
                    "openslide-python": openslide.__version__,
                    "openslide": openslide.__library_version__,
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
