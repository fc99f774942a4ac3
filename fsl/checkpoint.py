"""Save and load heads safely: weights as safetensors, a JSON sidecar naming the encoder, fusion,
classes and config, and the training state through `torch.load(weights_only=True)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fsl import FslError
from fsl.io import atomic_path, write_json


def save_head(folder: str | os.PathLike, head: torch.nn.Module, meta: dict) -> Path:
    folder = Path(folder)
    state = {k: v.detach().contiguous().clone() for k, v in head.state_dict().items()}
    with atomic_path(folder / "head.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(folder / "head.json", meta)
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    sidecar = Path(folder) / "head.json"
    if not sidecar.is_file():
        raise FslError(f"no checkpoint at {folder} (expected head.safetensors + head.json); "
                       "train one with `fsl train CONFIG`")
    return json.loads(sidecar.read_text())


def load_head(folder: str | os.PathLike, head: torch.nn.Module, encoder_id: str) -> dict:
    """Load weights into `head`; refuse a checkpoint made on another encoder's features."""
    meta = read_meta(folder)
    if meta.get("encoder_id") != encoder_id:
        raise FslError(f"checkpoint {folder} was trained on features of encoder {meta.get('encoder_id')!r}, "
                       f"not {encoder_id!r}; retrain it for this encoder or choose that encoder")
    state = load_file(str(Path(folder) / "head.safetensors"))
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FslError(f"checkpoint {folder} does not fit this head (missing {missing}, unexpected "
                       f"{unexpected}); was it trained with another method or fusion?")
    return meta


def save_train_state(folder: str | os.PathLike, state: dict) -> None:
    with atomic_path(Path(folder) / "train_state.pt") as tmp:
        torch.save(state, tmp)


def load_train_state(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / "train_state.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None
