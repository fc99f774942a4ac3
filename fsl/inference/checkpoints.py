"""Saved heads and training state: safetensors weights with a JSON sidecar, never pickles."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fsl.errors import FslError
from fsl.files import atomic_path, check_record, read_json, write_json


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or infinite values: such a head answers at chance."""
    return [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]


def save_head(folder: str | os.PathLike, head: torch.nn.Module, meta: dict) -> Path:
    """Weights (safetensors) + sidecar; a head with non-finite weights is never saved."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().clone() for k, v in head.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise FslError(f"refusing to save {folder}: {', '.join(bad)} hold NaN or infinite values")
    with atomic_path(folder / "head.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(folder / "head.json", meta)
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    sidecar = Path(folder) / "head.json"
    if not sidecar.is_file():
        raise FslError(
            f"no checkpoint at {folder} (expected head.safetensors + head.json); train one with `fsl train CONFIG`"
        )
    return check_record(
        read_json(sidecar, "checkpoint sidecar"),
        {"encoder_id": (str,)},
        sidecar,
        "checkpoint sidecar",
        "train it again with `fsl train CONFIG --restart`",
    )


def load_head(folder: str | os.PathLike, head: torch.nn.Module, encoder_id: str) -> dict:
    """Load weights into `head`; refuse a checkpoint made on another encoder's features."""
    meta = read_meta(folder)
    if meta.get("encoder_id") != encoder_id:
        raise FslError(
            f"checkpoint {folder} was trained on features of encoder {meta.get('encoder_id')!r}, "
            f"not {encoder_id!r}; retrain it for this encoder or choose that encoder"
        )
    weights = Path(folder) / "head.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise FslError(
            f"{weights} cannot be read ({error}); it is truncated or not a checkpoint. "
            "Train it again with `fsl train CONFIG --restart`"
        ) from None
    bad = non_finite(state)
    if bad:
        raise FslError(
            f"checkpoint {folder} holds NaN or infinite weights ({', '.join(bad)}); it would answer "
            "at chance. Train it again with a lower train.lr"
        )
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same names, other shapes: another fusion or projection size
        sizes = [line.strip() for line in str(error).splitlines() if "size mismatch" in line][:2]
        raise FslError(
            f"checkpoint {folder} does not fit this head ({'; '.join(sizes) or str(error)[:200]}); "
            "was it trained with another fusion, method or options?"
        ) from None
    if missing or unexpected:
        raise FslError(
            f"checkpoint {folder} does not fit this head (missing {missing}, unexpected "
            f"{unexpected}); was it trained with another method or fusion?"
        )
    return meta


def save_train_state(folder: str | os.PathLike, state: dict) -> None:
    with atomic_path(Path(folder) / "train_state.pt") as tmp:
        torch.save(state, tmp)


def load_train_state(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / "train_state.pt"
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise FslError(
            f"{path} cannot be read ({type(error).__name__}); it is damaged. Start over with "
            "`fsl train CONFIG --restart`"
        ) from None
