"""The retina cuts exactly the documented pixels, pads with zeros, and equals a per-example loop."""

import numpy as np
import pytest
import torch

from hardalign.vision.retina import Retina, glimpse_boxes, location_to_pixels


def reference_retina(images: np.ndarray, location: np.ndarray, patch: int, scales: int, factor: int = 2) -> np.ndarray:
    """The obviously correct version: one example, one scale, one pixel at a time."""
    n, channels, height, width = images.shape
    out = np.zeros((n, scales, channels, patch, patch), dtype=np.float64)
    for b in range(n):
        c_x = (location[b, 0] + 1) / 2 * width
        c_y = (location[b, 1] + 1) / 2 * height
        for s in range(scales):
            size = patch * factor**s
            left = int(np.floor(c_x - size / 2 + 0.5))
            top = int(np.floor(c_y - size / 2 + 0.5))
            crop = np.zeros((channels, size, size))
            for i in range(size):
                for j in range(size):
                    y, x = top + i, left + j
                    if 0 <= y < height and 0 <= x < width:
                        crop[:, i, j] = images[b, :, y, x]
            k = factor**s
            out[b, s] = crop.reshape(channels, patch, k, patch, k).mean(axis=(2, 4))
    return out


def _image(channels=1, height=8, width=8, dtype=torch.float64):
    return torch.arange(channels * height * width, dtype=dtype).reshape(1, channels, height, width) + 1


def test_centre_patch_is_exact():
    images = _image(height=28, width=28)
    out = Retina(patch_size=8)(images, torch.zeros(1, 2, dtype=images.dtype))
    torch.testing.assert_close(out[0, 0, 0], images[0, 0, 10:18, 10:18], rtol=0, atol=0)


@pytest.mark.parametrize(
    "corner, rows, cols",
    [((-1.0, -1.0), slice(0, 2), slice(0, 2)), ((1.0, 1.0), slice(6, 8), slice(6, 8)), ((1.0, -1.0), slice(0, 2), slice(6, 8))],
)
def test_corner_patch_is_exact_and_zero_padded(corner, rows, cols):
    images = _image()
    location = torch.tensor([corner], dtype=images.dtype)
    patch = Retina(patch_size=4)(images, location)[0, 0, 0]  # a 4x4 patch centred on the corner
    inside_rows = slice(2, 4) if corner[1] < 0 else slice(0, 2)
    inside_cols = slice(2, 4) if corner[0] < 0 else slice(0, 2)
    torch.testing.assert_close(patch[inside_rows, inside_cols], images[0, 0, rows, cols], rtol=0, atol=0)
    # the other three quarters lie outside the image: zeros
    assert patch.abs().sum() == images[0, 0, rows, cols].abs().sum()


def test_outside_the_image_reads_zeros():
    images = _image()
    far = torch.tensor([[3.0, 0.0], [0.0, -5.0], [-2.5, 2.5]], dtype=images.dtype)
    out = Retina(patch_size=2, num_scales=3)(images.expand(3, -1, -1, -1), far)
    assert out.abs().max() == 0


def test_scales_are_average_pooled_and_non_square_coordinates():
    # a 6x10 image: x is scaled by the width, y by the height
    images = _image(height=6, width=10)
    torch.testing.assert_close(
        location_to_pixels(torch.tensor([[0.0, 0.0]]), 6, 10), torch.tensor([[5.0, 3.0]]), rtol=0, atol=0
    )
    out = Retina(patch_size=2, num_scales=2)(images, torch.zeros(1, 2, dtype=images.dtype))
    torch.testing.assert_close(out[0, 0, 0], images[0, 0, 2:4, 4:6], rtol=0, atol=0)
    big = images[0, 0, 1:5, 3:7]  # the 4x4 patch, pooled 2x2
    torch.testing.assert_close(out[0, 1, 0], big.reshape(2, 2, 2, 2).mean((1, 3)), rtol=0, atol=0)
    assert glimpse_boxes(torch.zeros(1, 2), 6, 10, 4).tolist() == [[1, 3, 5, 7]]


@pytest.mark.parametrize("channels, height, width", [(1, 28, 28), (3, 17, 31)])
def test_batched_equals_looped_reference(channels, height, width, device):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(9, channels, height, width, generator=generator, dtype=torch.float64)
    location = torch.rand(9, 2, generator=generator, dtype=torch.float64) * 2.4 - 1.2  # some outside [-1, 1]
    location[0] = torch.tensor([-1.0, -1.0])
    location[1] = torch.tensor([1.0, 1.0])
    retina = Retina(patch_size=4, num_scales=3)
    out = retina(images.to(device), location.to(device)).cpu()
    expected = reference_retina(images.numpy(), location.numpy(), 4, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_follows_dtype_and_rejects_bad_shapes():
    images = torch.rand(2, 1, 8, 8, dtype=torch.float32)
    assert Retina(2)(images, torch.zeros(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="location must be"):
        Retina(2)(images, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="images must be"):
        Retina(2)(images[0], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="patch_size"):
        Retina(0)


@pytest.mark.parametrize("height, width, channels", [(20, 30, 1), (28, 28, 3), (60, 60, 1)])
def test_summed_area_read_equals_the_gather(height, width, channels):
    retina = Retina(patch_size=4, num_scales=3)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(7, channels, height, width, generator=generator)
    # inside, on the border, and far outside [-1, 1] (reads only zeros)
    location = torch.cat([torch.rand(5, 2, generator=generator) * 2 - 1, torch.tensor([[1.0, -1.0], [3.0, -4.0]])])
    expected = retina(images, location)
    got = retina.read(retina.integral(images), location, height, width, images.dtype)
    assert got.dtype == images.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert got[-1].abs().max() == 0
    with pytest.raises(ValueError, match="table"):
        retina.read(retina.integral(images), location, height + 1, width, images.dtype)
