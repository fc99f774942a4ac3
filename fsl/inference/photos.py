"""Photos as a head reads them: each file or image checked to be a product photo (a clear error
otherwise, never a silently embedded icon, strip or blank), then embedded once through the content
cache (fsl/store/content.py), so a photo seen before costs no encoder pass."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fsl.encoders.base import Encoder, as_rgb
from fsl.errors import FslError
from fsl.store.content import ContentCache

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MIN_SIDE = 16  # pixels: anything smaller (an icon, a tracking pixel) shows no product
MAX_ASPECT = 10  # a longer side over 10 times the shorter: a banner or a scan line, not a product photo


def usable_photo(image: Image.Image, name: str) -> Image.Image:
    """`image` as RGB, the way it looks (fsl/encoders/base.as_rgb), or an FslError saying why it cannot
    be a product photo: no pixels, too large, too small, a thin strip, or one flat colour. Such
    "photos" would still be embedded and, as support examples, move every answer."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise FslError(
            f"{name} is {width}×{height} pixels; up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted"
        )
    if min(width, height) < MIN_SIDE:
        raise FslError(f"{name} is {width}×{height} pixels; a photo needs at least {MIN_SIDE} on each side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise FslError(
            f"{name} is {width}×{height} pixels, a strip rather than a product photo (sides over {MAX_ASPECT}:1)"
        )
    try:
        rgb = as_rgb(image)
        flat = all(low == high for low, high in rgb.getextrema())
    except (OSError, ValueError) as error:
        raise FslError(f"{name} has the pixel mode {image.mode!r}, which cannot be read as a photo ({error})") from None
    if flat:
        raise FslError(f"{name} is blank: every pixel has the same colour")
    return rgb.copy() if rgb is image else rgb


def open_image(path: str | os.PathLike) -> Image.Image:
    """A product photo as RGB (usable_photo), or an FslError that says what is wrong with the file."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FslError(f"{name} was not found" + (" (a broken link)" if path.is_symlink() else ""))
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise FslError(
            f"{name} is {path.stat().st_size / 2**20:.0f} MB; images up to {MAX_IMAGE_BYTES // 2**20} MB are accepted"
        )
    try:
        with Image.open(path) as image:
            return usable_photo(image, name)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise FslError(f"{name} is not an image this app can read ({type(error).__name__})") from None


def embed_image(encoder: Encoder, image: Image.Image) -> np.ndarray:
    """[image_dim] of a photo already checked by usable_photo (RGB)."""
    return encoder.embed_pixels(encoder.image_transform(image).unsqueeze(0))[0]


def embed_text(encoder: Encoder, text: str) -> np.ndarray:
    return encoder.encode_texts([text], progress=False)[0]


def embed_photos(
    cache: ContentCache, encoder: Encoder, photos: Sequence[str | os.PathLike | Image.Image], checked: bool = False
) -> np.ndarray:
    """[n, image_dim]: files through the content cache (each checked readable first, unless the
    caller did: `checked`), PIL images directly."""
    files = [p for p in photos if not isinstance(p, Image.Image)]
    for path in [] if checked else files:
        open_image(path)  # a clear FslError for a missing, unreadable or degenerate file
    images = {  # every PIL image checked (and made RGB) before anything is embedded
        i: usable_photo(photo, f"photo {i + 1} (a PIL image)")
        for i, photo in enumerate(photos)
        if isinstance(photo, Image.Image)
    }
    cached = iter(cache.images(files)) if files else iter(())
    return np.stack(
        [embed_image(encoder, images[i]) if i in images else next(cached) for i in range(len(photos))]
    ).astype(np.float32)
