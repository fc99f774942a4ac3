"""YAML experiment configs into typed dataclasses; an unknown key is an error naming key and file."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fsl import FslError


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "offline"
    model: str | None = None
    pretrained: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a head, the features it sees, and the frozen episode sets it is judged on."""

    name: str
    method: str = "protonet"
    method_options: dict = field(default_factory=dict)
    fusion: str = "image"
    text_variant: str = "masked-articleType"
    label_column: str = "articleType"
    episodes: tuple[str, ...] = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
    encoder: EncoderConfig = EncoderConfig()
    batch_size: int = 64


def _build(cls, values: Any, source: str, where: str):
    if not isinstance(values, dict):
        raise FslError(f"{source}: {where or 'the file'} must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise FslError(f"{source}: unknown key {where}{unknown[0]!r}; known keys are {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        if key == "encoder":
            value = _build(EncoderConfig, value, source, "encoder.")
        elif key == "episodes":
            value = tuple([value] if isinstance(value, str) else value)
        elif key == "batch_size" and not (isinstance(value, int) and value > 0):
            raise FslError(f"{source}: {where}batch_size must be a positive whole number, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FslError(f"no experiment config at {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise FslError(f"{path}: not valid YAML ({error})") from None
    if isinstance(values, dict):
        values.setdefault("name", path.stem)
    return _build(ExperimentConfig, values, str(path), "")
