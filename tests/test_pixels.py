import numpy as np
import pytest

from napari_care.core.pixels import block_mean


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 17])
def test_block_mean_is_the_mean_of_each_block_rounded_half_up(factor):
    rng = np.random.default_rng(factor)
    pixels = rng.integers(0, 256, size=(2, 3 * factor, 2 * factor, 3), dtype=np.uint8)
    pixels[0, :factor, :factor] = 255  # the widest sums: no overflow
    means = pixels.reshape(2, 3, factor, 2, factor, 3).mean(axis=(2, 4))
    reduced = block_mean(pixels, factor)
    assert reduced.dtype == np.uint8 and reduced.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(reduced, np.floor(means + 0.5))
    assert (reduced[0, 0, 0] == 255).all()


def test_block_mean_refuses_partial_blocks():
    with pytest.raises(ValueError, match="5 x 4 image"):
        block_mean(np.zeros((5, 4, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="at least 1"):
        block_mean(np.zeros((4, 4, 3), np.uint8), 0)
