"""The offline towers in one image-text space: the projections `fsl align` trains (their weights,
sidecar and digest) and the encoder that applies them."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fsl.encoders.base import Encoder
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.files import atomic_path, check_record, read_json, write_json


class AlignedEncoder(Encoder):
    """The offline pair followed by projections trained by `fsl align` into one image-text space
    (fsl/harness/align.py): zero-shot on photos and text-to-photo search without CLIP weights."""

    def __init__(self, device: str = "cpu", pretrained: str | None = None):
        if not pretrained:
            raise FslError("the aligned encoder needs --pretrained checkpoints/align/NAME/best (from `fsl align`)")
        self.projections, self.alignment = load_alignment(pretrained)
        self.id = aligned_id(pretrained)
        self.base = OfflineEncoder(device)
        self.image_dim = self.text_dim = self.alignment["dim"]
        self.image_transform = self.base.image_transform

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projections.image(F.normalize(self.base._embed_pixels(pixels).float(), dim=-1))

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        base = self.base.text_runtime or self.base._embed_texts
        return self.projections.text(F.normalize(base(texts).float(), dim=-1))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """The offline tower (in ONNX Runtime where adopted), then the projection."""
        return self.projections.embed_image(torch.from_numpy(self.base.embed_pixels(pixels))).numpy()

    def use_onnx(self, cache_dir: Path) -> str:
        return self.base.use_onnx(cache_dir)


TOWERS = "offline:efficientnet-lite0+all-MiniLM-L6-v2"


class Projections(nn.Module):
    """Image and text features -> one space (unit vectors), and CLIP's learned temperature."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hidden: int = 0):
        super().__init__()

        def head(width: int) -> nn.Module:
            if hidden:
                return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim))
            return nn.Linear(width, dim)

        self.image, self.text = head(image_dim), head(text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(features), dim=-1)

    def embed_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(features), dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()  # CLIP's cap


# Checkpoints -----------------------------------------------------------------------------------


def save_alignment(folder: Path, model: Projections, meta: dict) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if any(not torch.isfinite(v).all() for v in state.values()):
        raise FslError(f"refusing to save {folder}: the projections hold NaN or infinite values")
    with atomic_path(folder / "projections.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(folder / "align.json", meta)


def load_alignment(folder: str | os.PathLike) -> tuple[Projections, dict]:
    """The projections and their sidecar (towers, catalog, split, dims); a missing or damaged one is
    an error naming the folder."""
    folder = Path(folder)
    weights, sidecar = folder / "projections.safetensors", folder / "align.json"
    if not (weights.is_file() and sidecar.is_file()):
        raise FslError(
            f"no alignment at {folder} (expected projections.safetensors + align.json); train one with `fsl align`"
        )
    fields = {"towers": (str,), "image_dim": (int,), "text_dim": (int,), "dim": (int,), "hidden": (int,),
              "split_seed": (int,), "label_column": (str,), "catalog_fingerprint": (str,)}  # fmt: skip
    meta = check_record(
        read_json(sidecar, "alignment sidecar"),
        fields,
        sidecar,
        "alignment sidecar",
        "train it again with `fsl align --restart`",
    )
    if meta.get("towers") != TOWERS:
        raise FslError(
            f"{folder} aligns the towers {meta.get('towers')!r}, not {TOWERS!r}: it cannot be used with these features"
        )
    sizes = {key: meta[key] for key in ("image_dim", "text_dim", "dim", "hidden")}
    if (
        not all(0 < size <= 1 << 16 for key, size in sizes.items() if key != "hidden")
        or not 0 <= sizes["hidden"] <= 1 << 16
    ):
        raise FslError(
            f"{sidecar}: the alignment sidecar is damaged (sizes {sizes}); train it again with `fsl align --restart`"
        )
    model = Projections(meta["image_dim"], meta["text_dim"], meta["dim"], meta["hidden"])
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as error:
        raise FslError(
            f"{weights} cannot be loaded ({type(error).__name__}); it is damaged. "
            "Train again with `fsl align --restart`"
        ) from None
    model.eval()
    return model.requires_grad_(False), meta


def alignment_digest(folder: str | os.PathLike) -> str:
    weights = Path(folder) / "projections.safetensors"
    if not weights.is_file():
        raise FslError(
            f"no alignment at {folder} (expected projections.safetensors + align.json); train one with `fsl align`"
        )
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def aligned_id(pretrained: str | os.PathLike | None) -> str:
    """The aligned encoder's id: the offline towers' and the projections' digest."""
    if not pretrained:
        raise FslError("the aligned encoder needs --pretrained checkpoints/align/NAME/best (from `fsl align`)")
    return f"aligned:{OfflineEncoder.id.removeprefix('offline:')}:{alignment_digest(pretrained)}"
