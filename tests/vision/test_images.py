"""TorchServe's image_classifier transform against torchvision's algorithm written out with PIL and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import photo
from triserve.vision.images import IMAGENET_MEAN, IMAGENET_STD, decode, imagenet_preprocess


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
