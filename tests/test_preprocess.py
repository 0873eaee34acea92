"""Preprocessing: equal to detr's eval transform (torchvision on PIL), EXIF, every PIL mode, bad files, batching."""

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.detr_reference import (
    detr_eval_batch,
    detr_eval_transform,
    get_size_with_aspect_ratio,
    nested_tensor_from_tensor_list,
)
from runtime.errors import PansegError
from runtime.preprocess import (
    load_and_preprocess,
    load_image,
    pad_batch,
    plan_batches,
    preprocess,
    target_size,
    to_rgb,
)
from train.datasets.collate import pad_images
from train.datasets.transforms import Compose, Normalize, RandomResize, ToTensor


def random_rgb(rng, width, height):
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------- target size


@given(
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.integers(1, 1000),
    st.one_of(st.none(), st.integers(1, 2000)),
)
@settings(max_examples=400, deadline=None)
def test_target_size_is_detrs_get_size_with_aspect_ratio(width, height, size, max_size):
    assert target_size(width, height, size, max_size) == get_size_with_aspect_ratio((width, height), size, max_size)


def test_target_size_rounds_half_to_even_and_truncates_the_long_side():
    # 10 * 1 / 4 = 2.5 exactly: Python's round gives 2 (half to even), rounding half up would give 3.
    assert round(2.5) == 2 and int(2.5 + 0.5) == 3
    assert target_size(4, 1, 3, 10) == (2, 8)
    # A real-size case: 1333 * 5 / 2666 = 2.5 -> shorter side 2, longer side int(2 * 2666 / 5) = int(1066.4).
    assert target_size(2666, 5, 800, 1333) == (2, 1066)
    assert target_size(5, 2666, 800, 1333) == (1066, 2)
    # The cap: 640x480 -> 800x1066 fits, 2000x500 is capped to 1333 on the long side.
    assert target_size(640, 480) == (800, 1066)
    assert target_size(2000, 500) == (333, 1332)  # round(1333 * 500 / 2000 = 333.25) = 333, int(333 * 4) = 1332
    assert target_size(800, 600) == (800, 1066)
    assert target_size(1066, 800) == (800, 1066)  # shorter side already 800: unchanged


# ---------------------------------------------------------------- pixels equal detr's transform


def assert_same_as_detr(image, size, max_size):
    ours = preprocess(image, size, max_size)
    ref = detr_eval_transform(image, size, max_size).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    return ours, ref


@given(st.integers(0, 2**32 - 1), st.integers(1, 90), st.integers(1, 90), st.integers(4, 40), st.integers(5, 70))
@settings(max_examples=60, deadline=None)
def test_preprocess_equals_detr_eval_transform(seed, width, height, size, max_size):
    rng = np.random.default_rng(seed)
    resizable = min(target_size(width, height, size, max_size)) > 0
    if not resizable:
        with pytest.raises(PansegError, match="too elongated"):
            preprocess(random_rgb(rng, width, height), size, max_size)
        return
    ours, ref = assert_same_as_detr(random_rgb(rng, width, height), size, max_size)
    assert np.array_equal(ours, ref)  # in practice bit for bit


@pytest.mark.parametrize(
    "width,height",
    [
        (640, 480),  # typical COCO: upscaled to 800 x 1066
        (1066, 800),  # already at size: no resize
        (2666, 5),  # round-half-to-even case of the max-size cap
        (1500, 300),  # capped by max_size
    ],
)
def test_preprocess_equals_detr_at_default_sizes(width, height):
    rng = np.random.default_rng(width * 7 + height)
    ours, _ = assert_same_as_detr(random_rgb(rng, width, height), 800, 1333)
    assert ours.shape[1:] == target_size(width, height, 800, 1333)


def test_preprocess_normalizes_with_imagenet_statistics():
    image = Image.new("RGB", (4, 3), (255, 0, 128))
    out = preprocess(image, size=3, max_size=None)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(out[channel], value, rtol=1e-6)


def test_load_and_preprocess_matches_detr_loading(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "img.png"
    random_rgb(rng, 37, 23).save(path)
    ours, original = load_and_preprocess(path, size=30, max_size=60)
    with Image.open(path) as im:
        ref = detr_eval_transform(im.convert("RGB"), 30, 60).numpy()  # detr's loader: Image.open(...).convert("RGB")
    assert original == (23, 37)
    assert np.array_equal(ours, ref)


# ---------------------------------------------------------------- EXIF


@pytest.mark.parametrize("orientation,rot90_k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, rot90_k):
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    loaded = np.asarray(load_image(path))
    assert np.array_equal(loaded, np.rot90(pixels, k=rot90_k))  # positive k: counter-clockwise
    raw = np.asarray(load_image(path, apply_exif=False))
    assert np.array_equal(raw, pixels)
    _, original = load_and_preprocess(path, size=8, max_size=20)
    assert original == loaded.shape[:2]


# ---------------------------------------------------------------- PIL modes


def rgb(image):
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(np.int64)


def test_mode_1_and_l_become_gray():
    assert rgb(Image.fromarray(np.array([[True, False]]))).tolist() == [[[255] * 3, [0] * 3]]
    assert rgb(Image.fromarray(np.array([[0, 7, 255]], np.uint8))).tolist() == [[[0] * 3, [7] * 3, [255] * 3]]


def test_alpha_is_composited_over_white():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], np.uint8))
    out = rgb(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    expected = np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(out[0, 2] - expected).max() <= 1
    la = Image.fromarray(np.array([[[40, 255], [40, 0], [40, 64]]], np.uint8), mode="LA")
    out = rgb(la)
    assert out[0, 0].tolist() == [40] * 3 and out[0, 1].tolist() == [255] * 3
    assert np.abs(out[0, 2] - (40 * 64 / 255 + 255 * (1 - 64 / 255))).max() <= 1


def test_palette_modes():
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 250, 10, 5] + [0] * 762)
    p.putpixel((1, 0), 1)
    assert rgb(p).tolist() == [[[0, 0, 0], [250, 10, 5]]]
    p.info["transparency"] = 0  # palette entry 0 transparent -> white
    assert rgb(p).tolist() == [[[255, 255, 255], [250, 10, 5]]]
    pa = p.convert("PA")
    pa.info.pop("transparency", None)
    out = rgb(pa)
    assert out[0, 1].tolist() == [250, 10, 5]


def test_other_colour_spaces():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    assert rgb(cmyk).tolist() == [[[255, 255, 255], [0, 255, 255]]]  # no ink = white; full cyan = (0, 255, 255)
    ycbcr = Image.new("YCbCr", (1, 1), (90, 128, 128))
    assert np.abs(rgb(ycbcr) - 90).max() <= 1
    for mode in ("RGBX", "HSV", "LAB", "RGBa"):
        out = rgb(Image.new(mode, (3, 2)))
        assert out.shape == (2, 3, 3)
    la_premultiplied = Image.frombytes("La", (2, 1), bytes([40, 255, 20, 128]))
    out = rgb(la_premultiplied)
    assert out[0, 0].tolist() == [40] * 3
    assert np.abs(out[0, 1] - (20 + 255 - 128)).max() <= 1  # premultiplied over white: L + 255 - alpha


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 300, 128]], np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow reads 16-bit PNG as I;16 (or I on older versions)
    out = np.asarray(load_image(path)).astype(np.int64)
    assert out[0, :, 0].tolist() == [0, 100, 255, 1, 0]  # round(v / 257)
    big_endian = Image.frombytes("I;16B", (2, 1), values[0, :2].astype(">u2").tobytes())
    assert rgb(big_endian)[0, :, 0].tolist() == [0, 100]


def test_thirty_two_bit_integer_rules():
    as_8bit = Image.fromarray(np.array([[0, 17, 255]], np.int32))
    assert rgb(as_8bit)[0, :, 0].tolist() == [0, 17, 255]
    as_16bit = Image.fromarray(np.array([[0, 257 * 3, 65535]], np.int32))
    assert rgb(as_16bit)[0, :, 0].tolist() == [0, 3, 255]
    stretched = Image.fromarray(np.array([[-100, 0, 100]], np.int32))
    assert rgb(stretched)[0, :, 0].tolist() == [0, 128, 255]  # rint(127.5) = 128


def test_float_rules():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert rgb(unit)[0, :, 0].tolist() == [0, 128, 255]
    byte_range = Image.fromarray(np.array([[0.0, 12.4, 200.0]], np.float32))
    assert rgb(byte_range)[0, :, 0].tolist() == [0, 12, 200]
    other = Image.fromarray(np.array([[-1.0, 1.0, 3.0, np.nan]], np.float32))
    assert rgb(other)[0, :, 0].tolist() == [0, 128, 255, 64]  # NaN -> 0, then stretched from [-1, 3]


# ---------------------------------------------------------------- bad files


def png_header_only(width, height):
    """A PNG whose header declares width x height but that carries no pixel data (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def write_truncated(path, fmt):
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".full")
    random_rgb(rng, 64, 64).save(tmp, format=fmt)
    data = tmp.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "case,make,message",
    [
        ("missing", None, "no such file"),
        ("empty", lambda p: p.write_bytes(b""), "empty file"),
        ("text", lambda p: p.write_text("hello, I am not an image\n"), "not an image"),
        ("garbage_png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an image"),
        ("truncated_jpeg", lambda p: write_truncated(p, "JPEG"), "truncated or corrupt"),
        ("truncated_png", lambda p: write_truncated(p, "PNG"), "truncated or corrupt"),
        ("bomb", lambda p: p.write_bytes(png_header_only(100_000, 100_000)), "decompression bomb"),
        ("huge", lambda p: p.write_bytes(png_header_only(20_000, 4_600)), "above the limit"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, case, make, message):
    path = tmp_path / f"{case}.img"
    if make is not None:
        make(path)
    with pytest.raises(PansegError) as info:
        load_image(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "small.png"
    random_rgb(np.random.default_rng(1), 40, 30).save(path)
    with pytest.raises(PansegError, match="1200 pixels, above the limit of 1000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).size == (40, 30)


def test_directory_is_refused(tmp_path):
    with pytest.raises(PansegError, match="is a directory"):
        load_image(tmp_path)


# ---------------------------------------------------------------- batching


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=5))
@settings(max_examples=40, deadline=None)
def test_pad_batch_matches_detr_nested_tensor(shapes):
    channels = shapes[0][0]
    rng = np.random.default_rng(len(shapes))
    images = [rng.standard_normal((channels, h, w)).astype(np.float32) for _, h, w in shapes]
    batch, mask = pad_batch(images)
    ref_batch, ref_mask = nested_tensor_from_tensor_list([torch.from_numpy(x) for x in images])
    assert batch.dtype == np.float32 and mask.dtype == bool
    assert np.array_equal(batch, ref_batch.numpy()) and np.array_equal(mask, ref_mask.numpy())


@given(st.lists(st.sampled_from([(800, 1066), (800, 1201), (1066, 800), (600, 1333)]), max_size=40),
       st.integers(1, 6))
@settings(max_examples=80, deadline=None)
def test_plan_batches_groups_equal_sizes(sizes, batch_size):
    batches = plan_batches(sizes, batch_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(sizes)))  # every image exactly once
    assert all(1 <= len(b) <= batch_size for b in batches)
    counts = {s: sizes.count(s) for s in set(sizes)}
    uniform = [b for b in batches if len({sizes[i] for i in b}) == 1 and len(b) == batch_size]
    for s, n in counts.items():  # each size fills n // batch_size whole batches on its own
        assert sum(1 for b in uniform if sizes[b[0]] == s) >= n // batch_size
    leftovers = sum(n % batch_size for n in counts.values())
    assert len(batches) == sum(n // batch_size for n in counts.values()) + -(-leftovers // batch_size)


def test_plan_batches_example():
    sizes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3), (1, 1)]
    assert plan_batches(sizes, 2) == [[0, 2], [1, 4], [5, 3]]
    with pytest.raises(ValueError):
        plan_batches(sizes, 0)


def test_detr_eval_batch_equals_the_training_eval_transform_and_padding():
    # the benchmark's eager preprocessing (detr's code) gives the very tensors training's eval transform gave it before
    rng = np.random.default_rng(11)
    pictures = [random_rgb(rng, 50, 37), random_rgb(rng, 41, 90), random_rgb(rng, 33, 33)]
    images, mask, processed = detr_eval_batch(pictures, 32, 53)
    transform = Compose([RandomResize([32], max_size=53), ToTensor(), Normalize()])
    tensors = [transform(picture, None)[0] for picture in pictures]
    ref_images, ref_mask = pad_images(tensors)
    assert torch.equal(images, ref_images) and torch.equal(mask, ref_mask) and bool(mask.any())
    assert processed == [tuple(t.shape[-2:]) for t in tensors] == [(32, 43), (52, 24), (32, 32)]
