"""TorchServe's image_classifier transform against torchvision's algorithm written out with PIL and torch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import photo
from triserve.vision.images import (DRAFT_MARGIN, IMAGENET_MEAN, IMAGENET_STD, decode, imagenet_image,
                                    imagenet_preprocess)


def torchvision_transform(image: Image.Image) -> np.ndarray:
    """Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std), step by step as torchvision does
    them on a PIL image (transforms/functional.py and _functional_pil.py)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224))
    tensor = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(224, 224, 3).permute((2, 0, 1)).contiguous()
    tensor = tensor.to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN.tolist(), dtype=torch.float32)
    std = torch.as_tensor(IMAGENET_STD.tolist(), dtype=torch.float32)
    return tensor.sub_(mean[:, None, None]).div_(std[:, None, None]).numpy()


@pytest.mark.parametrize("size", [None, (300, 451), (640, 257), (224, 224), (1000, 333)])
def test_imagenet_preprocess_matches_torchvision(size):
    image = photo("chelsea")
    if size is not None:
        image = image.resize(size, Image.BICUBIC)
    ours = imagenet_preprocess(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torchvision_transform(image))


def test_images_become_rgb_with_alpha_on_white():
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red
    grey = Image.new("L", (300, 300), 128)
    np.testing.assert_array_equal(imagenet_preprocess(rgba), imagenet_preprocess(Image.new("RGB", (300, 300), "white")))
    assert imagenet_preprocess(grey).shape == (3, 224, 224)
    with pytest.raises(Exception) as e:
        decode(b"GIF89a not really")
    assert "not a decodable image" in str(e.value)


def chelsea_jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    photo("chelsea").resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# The documented tolerance of a reduced decode (vision/images.py, README "TorchServe archives"):
# at most 4 of 255 levels per pixel, under 0.3 levels on average, against the full decode.
DRAFT_MAX_LEVELS, DRAFT_MEAN_LEVELS = 4, 0.3


@pytest.mark.parametrize("size", [(1804, 1200), (3157, 2100), (3800, 2533), (4032, 3024), (1200, 1804), (5000, 1100)])
def test_a_large_jpeg_decoded_reduced_equals_the_full_decode_within_the_tolerance(size):
    data = chelsea_jpeg(size)
    reduced = decode(data, at_least=DRAFT_MARGIN * 256)
    assert reduced.size[0] < size[0] and min(reduced.size) >= DRAFT_MARGIN * 256  # DCT scaling did reduce it
    assert reduced.info["full_size"] == size
    full = imagenet_preprocess(decode(data))
    ours = imagenet_image(data)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    levels = np.abs(ours - full) * IMAGENET_STD[:, None, None] * 255
    assert levels.max() <= DRAFT_MAX_LEVELS + 1e-3 and levels.mean() < DRAFT_MEAN_LEVELS


@pytest.mark.parametrize("size", [None, (640, 427), (1000, 1000)])
def test_jpegs_too_small_to_reduce_are_decoded_whole_and_match_torchvision(size):
    data = chelsea_jpeg(size) if size else chelsea_jpeg((451, 300))
    assert "full_size" not in decode(data, at_least=DRAFT_MARGIN * 256).info
    np.testing.assert_array_equal(imagenet_image(data), torchvision_transform(decode(data)))


def test_other_formats_are_never_reduced():
    buffer = io.BytesIO()
    photo("chelsea").resize((2400, 1600)).save(buffer, format="PNG")
    image = decode(buffer.getvalue(), at_least=512)
    assert image.size == (2400, 1600) and "full_size" not in image.info
