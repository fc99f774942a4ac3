"""The encoder contract: product photos and texts to unit vectors, batched, never trained.

Downstream code sees only arrays and `encoder.id`; subclasses supply the two towers."""

from __future__ import annotations

import io
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fsl.encoders.onnx import OnnxImageTower, OnnxMismatch, OnnxTextTower

logger = logging.getLogger(__name__)

_TEXT_LOCK = threading.Lock()


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Centre a non-square photo on a white square (catalog photos are shot on white), so the
    resize-and-centre-crop that follows keeps the whole product in frame instead of cutting the top
    and bottom of a 3:4 photo. A square photo is returned as it is: stores of square photos are unchanged."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image.convert("RGB"), ((side - width) // 2, (side - height) // 2))
    return canvas


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
WITH_ALPHA = ("RGBA", "LA", "PA")
PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts these only to their plain-alpha twins


def as_rgb(image: Image.Image) -> Image.Image:
    """A photo in any Pillow mode as 8-bit RGB, the way it looks: 16-bit and 32-bit grey scaled to
    8 bits (Pillow's own conversion clips them, so a 16-bit photo turns white), floats read as 0-1
    when they lie there, and transparency composited over white (the catalog's backdrop) rather
    than dropped to whatever colour the hidden pixels hold."""
    if image.mode in SIXTEEN_BIT or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if image.mode in SIXTEEN_BIT or (image.mode == "I" and 255 < top <= 65535):
            values = values / 257.0
        elif image.mode == "I" and top > 65535:
            values = values * (255.0 / top)
        elif image.mode == "F" and top <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    if image.mode in PREMULTIPLIED:
        image = image.convert(PREMULTIPLIED[image.mode])
    if image.mode in WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageFiles(Dataset):
    """Decode and preprocess photos in DataLoader workers, overlapping the forward pass; `render`, if
    given, changes each photo first (the re-rendered queries of fsl/episodes/shift.py)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor],
        render: Callable[[Image.Image], Image.Image] | None = None,
    ):
        self.paths = list(paths)
        self.transform, self.render = transform, render

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            image = as_rgb(image)
            return self.transform(self.render(image) if self.render else image)


class Encoder(ABC):
    """A frozen image tower and text tower. Subclasses set id, dims and image_transform."""

    id: str
    image_dim: int
    text_dim: int
    image_transform: Callable[[Image.Image], torch.Tensor]

    @abstractmethod
    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, image_dim], not yet normalised."""

    @abstractmethod
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        """B texts -> [B, text_dim], not yet normalised."""

    runtime: Callable[[torch.Tensor], torch.Tensor] | None = None  # a faster image tower (ONNX Runtime), if any
    text_runtime: Callable[[list[str]], torch.Tensor] | None = None  # a faster text tower, if any

    def text_tower(self) -> tuple[torch.nn.Module, Callable[[list[str]], dict[str, np.ndarray]]] | None:
        """(the text tower as a module of token ids and attention mask, the tokenizer that feeds it),
        for encoders whose text tower ONNX Runtime can run; None for the others."""
        return None

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        tower = self.runtime or self._embed_pixels
        return F.normalize(tower(pixels).float(), dim=-1).numpy()

    def use_onnx(self, cache_dir: Path) -> str:
        """Run the image tower, and the text tower where `text_tower` gives one, in ONNX Runtime
        (exported once, cached), each only if it agrees with eager (cosine >= 0.999 on a probe
        batch); returns what was done, for the user to read."""
        try:
            self.runtime = OnnxImageTower.load(self, cache_dir)
            said = f"image tower in ONNX Runtime ({self.runtime.agreement})"
        except (ImportError, OnnxMismatch, RuntimeError, ValueError) as error:
            said = f"image tower in eager PyTorch ({error})"
        if self.text_tower() is None:
            return said
        try:
            self.text_runtime = OnnxTextTower.load(self, cache_dir)
            return f"{said}; text tower in ONNX Runtime ({self.text_runtime.agreement})"
        except (ImportError, OnnxMismatch, RuntimeError, ValueError) as error:
            return f"{said}; text tower in eager PyTorch ({error})"

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Texts -> [B, text_dim] unit vectors (float32). Each distinct text is encoded once: product
        texts repeat (9,583 products' plain and masked texts hold 13,511 distinct of 19,166)."""
        distinct = list(dict.fromkeys(texts))
        out = np.empty((len(distinct), self.text_dim), dtype=np.float32)
        embed = self.text_runtime or self._embed_texts
        for start in tqdm(
            range(0, len(distinct), batch_size), desc="texts", unit="batch", disable=None if progress else True
        ):
            batch = distinct[start : start + batch_size]
            with _TEXT_LOCK:  # a Hugging Face fast tokenizer must not be used by two threads at once
                out[start : start + len(batch)] = F.normalize(embed(batch).float(), dim=-1).numpy()
        if len(distinct) == len(texts):
            return out
        row = {text: i for i, text in enumerate(distinct)}
        return out[[row[text] for text in texts]]

    def image_batches(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        num_workers: int | None = None,
        render: Callable | None = None,
    ) -> DataLoader:
        workers = max(1, (os.cpu_count() or 2) - 1) if num_workers is None else num_workers
        return DataLoader(
            ImageFiles(paths, self.image_transform, render), batch_size=batch_size, num_workers=workers, shuffle=False
        )

    def encode_images(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: bool = True,
        render: Callable | None = None,
    ) -> np.ndarray:
        """Photo files -> [B, image_dim] unit vectors (float32)."""
        out = np.empty((len(paths), self.image_dim), dtype=np.float32)
        start = 0
        for pixels in tqdm(
            self.image_batches(paths, batch_size, num_workers, render),
            desc="images",
            unit="batch",
            disable=None if progress else True,
        ):
            out[start : start + len(pixels)] = self.embed_pixels(pixels)
            start += len(pixels)
        return out


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


@contextmanager
def quiet_loading() -> Iterator[None]:
    """The weight packages print their own loading chatter; one line from us says it instead."""
    from transformers.utils import logging as transformers_logging

    logger.info("loading the encoder's weights")
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
