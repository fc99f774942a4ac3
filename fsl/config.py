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
class TrainConfig:
    """Episodic meta-training on base classes; model selection on validation-class episodes."""

    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.0
    episodes_per_step: int = 16
    n_way: int = 5
    k_shot: int = 5
    q_query: int = 15
    val_every: int = 50
    val_episodes: str = "val-5w5s"
    seed: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a head, the features it sees, and the frozen episode sets it is judged on."""

    name: str
    method: str = "protonet"
    method_options: dict = field(default_factory=dict)
    fusion: str = "image"
    fusion_options: dict = field(default_factory=dict)
    text_variant: str = "masked-articleType"
    class_prompt: str = "{}"  # how class names are put to the text tower (zero-shot, text-initialised probes)
    label_column: str = "articleType"
    episodes: tuple[str, ...] = ("novel-5w1s", "novel-5w5s", "novel-15w5s")
    encoder: EncoderConfig = EncoderConfig()
    batch_size: int = 64
    train: TrainConfig | None = None  # set for heads with meta-parameters to learn


POSITIVE_INTS = {"batch_size", "steps", "episodes_per_step", "n_way", "k_shot", "q_query", "val_every"}


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
        elif key == "train":
            value = _build(TrainConfig, value, source, "train.")
        elif key in ("method_options", "fusion_options") and not isinstance(value, dict):
            raise FslError(f"{source}: {where}{key} must be a mapping, got {value!r}")
        elif key == "episodes":
            value = tuple([value] if isinstance(value, str) else value)
        elif key in POSITIVE_INTS and not (isinstance(value, int) and value > 0):
            raise FslError(f"{source}: {where}{key} must be a positive whole number, got {value!r}")
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


def config_from_dict(values: dict, source: str) -> ExperimentConfig:
    """A config saved beside a checkpoint (dataclasses.asdict) back into its dataclass."""
    return _build(ExperimentConfig, values, source, "")
