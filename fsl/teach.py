"""New categories from a few examples, for the demo and `fsl predict`: prototypes per modality.

A taught category keeps the mean image feature and the mean text feature of its examples (either
may be missing). A query is scored against each category by cosine similarity on the modalities
both have, weighted as in the fused experiments; a softmax turns scores into confidences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fsl import FslError
from fsl.encoder import Encoder

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_WEIGHT = 0.7  # as the fused experiments, chosen on validation classes
TEMPERATURE = 0.05


def open_image(path: str | os.PathLike) -> Image.Image:
    """A product photo as RGB, or an FslError that says what is wrong with the file."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FslError(f"{name} was not found")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise FslError(f"{name} is {path.stat().st_size / 2**20:.0f} MB; images up to "
                       f"{MAX_IMAGE_BYTES // 2**20} MB are accepted")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise FslError(f"{name} is {image.width}×{image.height} pixels; up to "
                               f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise FslError(f"{name} is not an image this app can read ({type(error).__name__})") from None


def embed_image(encoder: Encoder, image: Image.Image) -> np.ndarray:
    return encoder.embed_pixels(encoder.image_transform(image).unsqueeze(0))[0]


def embed_text(encoder: Encoder, text: str) -> np.ndarray:
    return encoder.encode_texts([text], progress=False)[0]


@dataclass
class Category:
    name: str
    image_features: list[np.ndarray] = field(default_factory=list)
    text_features: list[np.ndarray] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)  # image paths, for showing what was learned

    @property
    def size(self) -> int:
        return len(self.image_features) + len(self.text_features)

    def prototype(self, modality: str) -> np.ndarray | None:
        features = self.image_features if modality == "image" else self.text_features
        if not features:
            return None
        mean = np.mean(features, axis=0)
        return mean / np.linalg.norm(mean)


def scores(categories: list[Category], image: np.ndarray | None, text: np.ndarray | None,
           image_weight: float = IMAGE_WEIGHT) -> dict[str, float]:
    """Weighted cosine similarity to each category on the modalities query and category share."""
    out = {}
    for category in categories:
        total, weights = 0.0, 0.0
        for modality, query, weight in (("image", image, image_weight), ("text", text, 1 - image_weight)):
            prototype = category.prototype(modality)
            if query is not None and prototype is not None:
                total += weight * float(query @ prototype)
                weights += weight
        if weights:
            out[category.name] = total / weights
    return out


def confidences(categories: list[Category], image: np.ndarray | None, text: np.ndarray | None,
                image_weight: float = IMAGE_WEIGHT) -> dict[str, float]:
    """Softmax over the categories that can be compared with the query; {} when none can."""
    raw = scores(categories, image, text, image_weight)
    if not raw:
        return {}
    values = torch.softmax(torch.tensor(list(raw.values())) / TEMPERATURE, dim=0).tolist()
    return dict(sorted(zip(raw, values), key=lambda item: -item[1]))
