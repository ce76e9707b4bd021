"""The GPU path of extraction, tested on the CPU: device choice, autocast dtype, the overlapped feed.

No test needs a GPU: CUDA and MPS availability are monkeypatched where the choice is tested,
and the overlapped feed (reader thread, queue of ready batches, reusable host buffers) is run
with a CPU encoder and compared with the plain path.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest_fakes import PINK, PURPLE, FakeEncoder, FakeSlide, slide_image

from napari_care.core import extract
from napari_care.core.extract import BatchBufferPool, Cancelled, extract_features
from napari_care.core.progress import run_to_end
from napari_care.core.tiling import tile_grid

torch = pytest.importorskip("torch")
from napari_care.core.encoders import create_encoder  # noqa: E402
from napari_care.core.encoders import device as device_mod  # noqa: E402
from napari_care.core.encoders.device import autocast_dtype, pick_device  # noqa: E402

BLOCKS = [(0, 0, 1024, 512, PINK), (0, 512, 1024, 1000, PURPLE)]
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 64}


@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda=..., mps=..., capability=...)``: pretend which accelerators torch sees."""

    def set_up(*, cuda: bool = False, mps: bool = False, count: int = 1, capability=(9, 0)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(device_mod, "mps_available", lambda: mps)

    return set_up


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_device_is_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert pick_device().type == expected
    assert pick_device("cpu").type == "cpu"  # an explicit device overrides the choice


def test_explicit_device_is_checked(machine):
    machine(cuda=True, count=2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="2 CUDA device"):
        pick_device("cuda:2")
    machine(cuda=False)
    with pytest.raises(ValueError, match=r"device 'cuda'.*use device='cpu'"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(ValueError, match="not a torch device"):
        pick_device("gpu0")


@pytest.mark.parametrize(
    ("device", "capability", "precision", "expected"),
    [
        ("cuda", (9, 0), "auto", torch.bfloat16),  # H100
        ("cuda", (8, 0), "auto", torch.bfloat16),  # A100
        ("cuda", (7, 5), "auto", torch.float16),  # T4: no native bfloat16
        ("mps", (9, 0), "auto", torch.float16),
        ("cpu", (9, 0), "auto", None),  # none on the CPU unless asked
        ("cpu", (9, 0), "bf16", torch.bfloat16),
        ("cuda", (9, 0), "fp16", torch.float16),
        ("cuda", (9, 0), "fp32", None),
    ],
)
def test_autocast_dtype(machine, device, capability, precision, expected):
    machine(cuda=True, capability=capability)
    assert autocast_dtype(torch.device(device), precision) == expected


def test_bad_precision_is_refused_before_building():
    with pytest.raises(ValueError, match="precision must be one of"):
        create_encoder("uni", weights="random", device="cpu", model_kwargs=TINY, precision="int8")


def test_cpu_encoder_runs_in_float32_unless_asked():
    plain = create_encoder("uni", weights="random", device="cpu", model_kwargs=TINY)
    assert plain.autocast_dtype is None and plain.device.type == "cpu"
    tiles = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    bf16 = create_encoder("uni", weights="random", device="cpu", model_kwargs=TINY, precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    reference, reduced = plain.encode(tiles), bf16.encode(tiles)
    assert reduced.dtype == np.float32 and not np.array_equal(reference, reduced)  # autocast really ran
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(reduced, axis=1)
    cosine = (reference * reduced).sum(1) / norms
    assert cosine.min() > 0.99


@pytest.fixture
def slide(tmp_path):
    return FakeSlide(slide_image(1000, 1200, BLOCKS, noise=6), tmp_path / "gpu.svs", factors=(1, 2, 4))


@pytest.fixture
def encoder():
    return create_encoder("uni", weights="random", device="cpu", model_kwargs=TINY)


def _run(slide, grid, encoder, **kwargs):
    return run_to_end(extract_features(slide, grid, encoder, batch_size=5, num_workers=3, **kwargs))


def test_overlapped_feed_gives_the_features_of_the_plain_path(slide, encoder, monkeypatch):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=64, min_tissue=0)
    plain = _run(slide, grid, encoder)  # the CPU path, as before
    calls = []
    real_feed = extract._encode_on_device

    def spy(*args, **kwargs):
        calls.append(1)
        yield from real_feed(*args, **kwargs)

    monkeypatch.setattr(extract, "_feeds_device", lambda enc: True)
    monkeypatch.setattr(extract, "_encode_on_device", spy)
    fed = _run(slide, grid, encoder)
    assert calls and len(grid) > 3 * 5  # several batches, more than the pool holds at once
    np.testing.assert_array_equal(fed.features, plain.features)
    np.testing.assert_array_equal(fed.coords, plain.coords)
    # and both are what encode() gives on the tiles read one by one
    assert int(grid.tile_size_level0) == 128 and grid.read_level == 1
    corners = grid.coords[:3]
    first = np.stack([np.asarray(slide.read_region((int(x), int(y)), 1, (64, 64))) for x, y in corners])
    np.testing.assert_allclose(plain.features[:3], encoder.encode(first), rtol=1e-5, atol=1e-5)


def test_overlapped_feed_with_a_fake_encoder_matches_tile_means(slide, monkeypatch):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=64, min_tissue=0)
    plain = _run(slide, grid, FakeEncoder())
    monkeypatch.setattr(extract, "_feeds_device", lambda enc: True)
    fake = FakeEncoder()
    fake.device = torch.device("cpu")
    fake.preprocess = lambda tiles: tiles.to(torch.float64)
    fake.forward_tensor = lambda x: torch.cat(
        [x.flatten(1, 2).mean(1), torch.full((len(x), 1), float(x.shape[1]), dtype=x.dtype)], 1
    ).float()
    fed = _run(slide, grid, fake)
    np.testing.assert_allclose(fed.features, plain.features, rtol=1e-6)


def test_overlapped_feed_cancels_and_stops_its_reader(slide, encoder, monkeypatch):
    monkeypatch.setattr(extract, "_feeds_device", lambda enc: True)
    grid = tile_grid(slide, mpp=1.0, tile_size_px=64, min_tissue=0)
    event = threading.Event()
    before = {t.name for t in threading.enumerate()}
    run = extract_features(slide, grid, encoder, batch_size=4, num_workers=2, cancel=event)
    next(run)  # cached report
    next(run)  # the first batch is done
    event.set()
    with pytest.raises(Cancelled):
        for _ in run:
            pass
    alive = [t.name for t in threading.enumerate() if t.name.startswith("napari-care-feed")]
    assert not alive and "napari-care-feed" not in before


def test_reader_errors_reach_the_caller(slide, encoder, monkeypatch):
    monkeypatch.setattr(extract, "_feeds_device", lambda enc: True)
    grid = tile_grid(slide, mpp=1.0, tile_size_px=64, min_tissue=0)

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(slide, "read_region", broken)
    with pytest.raises(OSError, match="disk gone"):
        _run(slide, grid, encoder)


def test_buffer_pool_hands_a_buffer_out_again_only_after_its_upload():
    pool = BatchBufferPool((2, 4, 4, 3), 2, pin=False)
    first, second = pool.take(), pool.take()
    assert first.ctypes.data != second.ctypes.data and pool.tensor_of(first[:1]).shape == (1, 4, 4, 3)
    assert pool.tensor_of(np.zeros((2, 4, 4, 3), np.uint8)) is None  # not from the pool

    class Upload:
        waited = False

        def synchronize(self):
            Upload.waited = True

    pool.give_back(first[:1], Upload())
    again = pool.take()
    assert again.ctypes.data == first.ctypes.data and Upload.waited
