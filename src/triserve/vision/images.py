"""Decode images and prepare them the way Triton's image_client does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from triserve.errors import invalid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def decode(data: bytes) -> Image.Image:
    """Bytes of any Pillow format to an RGB image; undecodable data is a client error."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:  # its text names the BytesIO object: say what it means instead
        raise invalid("the request body is not a decodable image: not an image format the server reads"
                      " (JPEG, PNG, BMP, GIF, WebP, TIFF)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise invalid(f"the request body is not a decodable image: {e}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (PNG alpha, palettes, greyscale, CMYK)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_files(paths: list[str]) -> list[Path]:
    """Files as given; folders expand to their image files, sorted (as image_client does)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    return files


def image_client_preprocess(
    image: Image.Image, layout: str, dtype: np.dtype, channels: int, height: int, width: int, scaling: str
) -> np.ndarray:
    """image_client.py's preprocess: resize (no crop), scale, HWC->CHW for NCHW."""
    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    array = np.asarray(image).astype(dtype)
    if array.ndim == 2:
        array = array[:, :, None]
    if scaling == "INCEPTION":
        array = (array / 127.5) - 1
    elif scaling == "VGG":
        array = array - (np.array((123, 117, 104)) if channels == 3 else 128)
    array = array.astype(dtype)
    if layout == "NCHW":
        array = np.transpose(array, (2, 0, 1))
    return np.ascontiguousarray(array)


IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)


def imagenet_preprocess(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """TorchServe's image_classifier transform, as torchvision computes it, without torchvision:
    Resize(256) (short side, bilinear), CenterCrop(224), ToTensor (/255, CHW), ImageNet Normalize.
    Returns float32 [3, crop, crop]."""
    image = to_rgb(image)
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        image = image.resize(size, Image.BILINEAR)
    width, height = size
    if width < crop or height < crop:
        raise invalid(f"image of {w}x{h} pixels is too small to crop {crop}x{crop} after resizing")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    pixels = np.asarray(image)[top : top + crop, left : left + crop]
    x = pixels.astype(np.float32) / np.float32(255)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))
