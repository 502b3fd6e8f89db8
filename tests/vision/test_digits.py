"""Translated and cluttered canvases: digit intact, distractors from other digits, seeded, fast."""

import time

import numpy as np
import pytest

from hardalign.vision.digits import clutter, make_canvas, translate


def _digits(n=50, seed=0):
    rng = np.random.default_rng(seed)
    digits = np.zeros((n, 28, 28), dtype=np.uint8)
    digits[:, 4:24, 8:20] = rng.integers(1, 256, (n, 20, 12), dtype=np.uint8)  # ink in a 20x12 block
    return digits


def test_translate_keeps_the_digit_whole_and_positions_vary():
    digits = _digits()
    canvas = translate(digits, 60, np.random.default_rng(1))
    assert canvas.shape == (50, 60, 60) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(canvas.reshape(50, -1).sum(1), digits.reshape(50, -1).sum(1))
    # locate each digit by its first ink row/column: positions are spread over the canvas
    rows = (canvas.max(2) > 0).argmax(1)
    cols = (canvas.max(1) > 0).argmax(1)
    assert rows.min() < 10 and rows.max() > 30 and cols.min() < 14 and cols.max() > 34


def test_clutter_adds_crops_of_other_digits_and_is_seeded():
    digits = np.zeros((40, 28, 28), dtype=np.uint8)
    for i in range(40):
        digits[i] = i + 1  # each "digit" a constant value: every pixel tells where it came from
    canvas = make_canvas(digits, "cluttered", seed=5, size=60, num_distractors=4)
    again = make_canvas(digits, "cluttered", seed=5, size=60, num_distractors=4)
    other = make_canvas(digits, "cluttered", seed=6, size=60, num_distractors=4)
    np.testing.assert_array_equal(canvas, again)
    assert not np.array_equal(canvas, other)
    for i in range(40):
        values = set(np.unique(canvas[i]).tolist()) - {0}
        assert i + 1 in values  # the digit itself
        extra = values - {i + 1}
        assert extra, "some distractor visible"  # crops of 8x8 from other digits (maximum combine)
        assert all(value != i + 1 for value in extra)
        # the digit's 28x28 block is intact (pixel-wise maximum never lowers it)
        assert (canvas[i] >= i + 1).sum() >= 28 * 28


def test_clutter_100_with_8_distractors_and_errors():
    digits = _digits()
    canvas = clutter(digits, 100, np.random.default_rng(0), num_distractors=8)
    assert canvas.shape == (50, 100, 100)
    assert canvas.reshape(50, -1).sum(1).min() >= digits.reshape(50, -1).sum(1).min()
    with pytest.raises(ValueError, match="canvas size"):
        translate(digits, 20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="distractor_size"):
        clutter(digits, 60, np.random.default_rng(0), num_distractors=2, distractor_size=40)
    with pytest.raises(ValueError, match="variant"):
        make_canvas(digits, "rotated", seed=0)


def test_fast_enough_for_on_the_fly_generation():
    digits = _digits(n=10_000)
    started = time.perf_counter()
    make_canvas(digits, "cluttered", seed=0, size=60, num_distractors=4)
    # measured 0.5 s on one core of the busy shared machine; the bound is loose on purpose
    assert time.perf_counter() - started < 5.0


def test_affine_digits_rotates_and_scales_about_the_centre():
    from hardalign.vision.digits import affine_digits

    digits = _digits(3)
    np.testing.assert_array_equal(affine_digits(digits, np.zeros(3), np.ones(3)), digits)
    # 90 degrees counter-clockwise as displayed is np.rot90 (rows down, columns right)
    np.testing.assert_array_equal(affine_digits(digits, np.full(3, 90.0), np.ones(3)), np.rot90(digits, 1, axes=(1, 2)))
    np.testing.assert_array_equal(affine_digits(digits, np.full(3, -90.0), np.ones(3)), np.rot90(digits, -1, axes=(1, 2)))
    # zoom 2 doubles the ink's extent about the centre: the 20x12 block becomes about 40x24, clipped to 28
    block = np.zeros((1, 28, 28), dtype=np.uint8)
    block[0, 11:17, 12:16] = 255  # 6 rows x 4 columns around the centre 13.5
    big = affine_digits(block, np.zeros(1), np.full(1, 2.0))[0] > 127
    rows, cols = np.nonzero(big)
    assert rows.max() - rows.min() + 1 == 12 and cols.max() - cols.min() + 1 == 8
    assert abs(rows.mean() - 13.5) < 0.6 and abs(cols.mean() - 13.5) < 0.6


def test_augment_digits_is_seeded_and_off_by_default():
    from hardalign.vision.digits import augment_digits

    digits = _digits(8)
    np.testing.assert_array_equal(augment_digits(digits, seed=0), digits)  # nothing asked: unchanged
    out = augment_digits(digits, seed=1, rotation=20, scale=0.2)
    assert out.shape == digits.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, augment_digits(digits, seed=1, rotation=20, scale=0.2))
    assert not np.array_equal(out, augment_digits(digits, seed=2, rotation=20, scale=0.2))
    assert not np.array_equal(out, digits)
    with pytest.raises(ValueError, match="rotation"):
        augment_digits(digits, seed=0, rotation=-1)
    with pytest.raises(ValueError, match="scale"):
        augment_digits(digits, seed=0, scale=1.0)
