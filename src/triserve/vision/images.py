"""Decode images and prepare them the way Triton's image_client does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from triserve.errors import invalid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def decode(data: bytes, at_least: int | None = None) -> Image.Image:
    """Bytes of any Pillow format to an RGB image; undecodable data is a client error.
    `at_least`: a JPEG may be decoded smaller, by libjpeg's DCT scaling (1/2, 1/4 or 1/8, Pillow's
    `draft`), as long as both sides stay at least `at_least` pixels; the image's `info` then holds
    its full size under "full_size" and the full image's area in its pixels under "full_box"
    (its last row and column may be partial)."""
    try:
        image = Image.open(io.BytesIO(data))
        full_size, drafted = image.size, None
        if at_least is not None and image.format == "JPEG":
            drafted = image.draft(image.mode, (at_least, at_least))  # no-op unless a side is >= 2 x at_least
        image.load()
    except UnidentifiedImageError:  # its text names the BytesIO object: say what it means instead
        raise invalid("the request body is not a decodable image: not an image format the server reads"
                      " (JPEG, PNG, BMP, GIF, WebP, TIFF)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise invalid(f"the request body is not a decodable image: {e}") from None
    image = to_rgb(image)
    if image.size != full_size and drafted is not None:
        image.info["full_size"], image.info["full_box"] = full_size, drafted[1]
    return image


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


# A JPEG decoded for imagenet_preprocess may be reduced while its short side stays at least this
# many times the resize target: the answer then differs from the full decode by at most 2 of 255
# levels per pixel (mean under 0.3; tests/vision/test_images.py), and a 12-megapixel photo decodes
# at 1/4 of its size. Reducing down to the target itself differs by up to 6 levels.
DRAFT_MARGIN = 2


def imagenet_image(data: bytes, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Image bytes through imagenet_preprocess, a large JPEG decoded reduced (DRAFT_MARGIN)."""
    return imagenet_preprocess(decode(data, at_least=DRAFT_MARGIN * resize), resize, crop)


def imagenet_preprocess(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """TorchServe's image_classifier transform, as torchvision computes it, without torchvision:
    Resize(256) (short side, bilinear), CenterCrop(224), ToTensor (/255, CHW), ImageNet Normalize.
    Returns float32 [3, crop, crop]. The resized size comes from the image's full size (its
    info "full_size" when decode reduced it), so a reduced decode is cropped as the full one."""
    image = to_rgb(image)
    w, h = image.info.get("full_size", image.size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if "full_box" in image.info:  # reduced by decode: resize exactly the full image's area
        image = image.resize(size, Image.BILINEAR, box=image.info["full_box"])
    elif size != image.size:
        image = image.resize(size, Image.BILINEAR)
    width, height = size
    if width < crop or height < crop:
        raise invalid(f"image of {w}x{h} pixels is too small to crop {crop}x{crop} after resizing")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    pixels = np.asarray(image)[top : top + crop, left : left + crop]
    # One float32 array, written in CHW order: the same float32 operations as torchvision's
    # ToTensor and Normalize (x / 255, then - mean, then / std), without their temporaries.
    x = np.empty((3, crop, crop), dtype=np.float32)
    np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=x, dtype=np.float32)
    x -= IMAGENET_MEAN[:, None, None]
    x /= IMAGENET_STD[:, None, None]
    return x
