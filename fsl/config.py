"""YAML experiment configs into typed dataclasses; an unknown key is an error naming key and file."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fsl.errors import FslError, shown
from fsl.files import safe_name

RUNTIMES = ("auto", "onnx", "eager")
# Photos whose image features reach this cosine are one near-duplicate group (fsl.episodes.near_duplicates)
NEAR_DUPLICATE_THRESHOLD = 0.98
TEST_TIME_VIEWS = ("flip",)  # the photo views test-time augmentation can average in (fsl/episodes/shift.py)
# The "none of these" scores a calibration can threshold (fsl/inference/open_set.py)
UNKNOWN_SCORES = ("max-softmax", "energy", "nearest-support", "mahalanobis")
UNKNOWN = "unknown"  # the answer for a photo of none of the taught categories (so no category may be named so)


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "offline"
    model: str | None = None
    pretrained: str | None = None
    device: str = "cpu"
    runtime: str = "auto"  # the towers in ONNX Runtime where it installs and agrees with eager, else eager


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
    # Extra sources of training episodes, taken in turn with the label column's own: other label
    # columns (subCategory, baseColour, usage, season, gender), drawn only from base-class products
    sources: tuple[str, ...] = ()


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
    # test-time augmentation: each photo's image feature averaged with these views' (support and queries)
    test_time_views: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdaptConfig:
    """`fsl adapt`'s recipe (experiments/adapt/*.yaml, `--set` overrides); checked by
    fsl.harness.adapt.check_adapt_config before any work."""

    name: str = "supervised"
    # the frozen towers: the offline pair, or a CLIP model (name clip, model, pretrained as `fsl embed`'s)
    encoder: EncoderConfig = EncoderConfig()
    towers: str = "image"  # which tower(s) learn: image, text or both (a learning text tower: the fused loss)
    cut: int = 1  # the last `cut` blocks are trained (offline: MBConv blocks and the head convolution)
    mode: str = "full"
    rank: int = 8  # LoRA rank (mode lora)
    objective: str = "supervised"
    steps: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128  # products per supervised step
    n_way: int = 10  # episodic steps: one N-way K-shot Q-query base episode each
    k_shot: int = 5
    q_query: int = 10
    flip: bool = True  # augment: mirror half the offline image maps (a mirrored photo's map is close to it)
    crop: float = 1.0  # augment: a random square of this share of each offline image map's side (1: none)
    mix: float = 0.0  # augment: each offline image map blended with one of its class, that one weighing up to `mix`
    val_every: int = 25
    val_episodes: tuple[str, ...] = ("val-5w5s", "val-allway-5s")
    image_weight: float = 0.7  # validation judges the fused-masked features of the README's main heads
    text_variant: str = "masked-articleType"
    label_column: str = "articleType"
    split_seed: int = 0
    seed: int = 0
    # the classes trained on: base (the split's; the step chosen on its validation classes), selection
    # (base and validation: every class but the split's novel ones) or all (every class the split holds,
    # for your own categories); the last two hold nothing out, so they run `steps` and keep the last
    classes: str = "base"


POSITIVE_INTS = {"batch_size", "steps", "episodes_per_step", "n_way", "k_shot", "q_query", "val_every", "cut", "rank"}
POSITIVE_FLOATS = {"lr", "crop"}
NON_NEGATIVE_FLOATS = {"weight_decay", "mix"}
NON_NEGATIVE_INTS = {"seed", "split_seed"}
STRINGS = {
    "name",
    "method",
    "fusion",
    "text_variant",
    "class_prompt",
    "label_column",
    "val_episodes",
    "mode",
    "objective",
    "towers",
    "classes",
}
PATH_PARTS = {"name", "text_variant", "label_column", "val_episodes"}  # they become parts of file names


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load that refuses YAML aliases (*name): no config needs them, and nested ones expand
    exponentially (a 512-byte "billion laughs" file would take gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"a YAML alias (*{event.anchor[:40]}) at line {event.start_mark.line + 1}; "
                "configs are read without aliases: write the value out"
            )
        return super().compose_node(parent, index)


def read_yaml(text: str, source: str) -> Any:
    """YAML text as safe_load reads it, aliases refused; an error names `source`."""
    try:
        loader = _NoAliasLoader(text)  # the reader refuses control characters already here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise FslError(f"{source}: not valid YAML for fsl ({str(error)[:300]})") from None


def _check_value(key: str, value: Any, source: str, where: str) -> None:
    """Numbers must be finite and in range; booleans are not numbers (YAML `true` is no batch size)."""

    def fail(expected: str):
        raise FslError(f"{source}: {where}{key} must be {expected}, got {shown(value)}")

    is_int = type(value) is int
    is_number = is_int or type(value) is float
    if key in POSITIVE_INTS and not (is_int and value > 0):
        fail("a positive whole number")
    if key in NON_NEGATIVE_INTS and not (is_int and value >= 0):
        fail("a whole number >= 0")
    if key in POSITIVE_FLOATS and not (is_number and math.isfinite(value) and value > 0):
        fail("a finite number > 0")
    if key in NON_NEGATIVE_FLOATS and not (is_number and math.isfinite(value) and value >= 0):
        fail("a finite number >= 0")
    if key in STRINGS and not isinstance(value, str):
        fail("a text")
    if key == "runtime" and value not in RUNTIMES:
        fail(f"one of {list(RUNTIMES)}")
    if key in PATH_PARTS:
        safe_name(value, f"{source}: {where}{key}")


def _coerce(key: str, value: Any) -> Any:
    """YAML 1.1 reads `3e-4` as text: accept it where a number is meant."""
    if key in POSITIVE_FLOATS | NON_NEGATIVE_FLOATS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _build(cls, values: Any, source: str, where: str):
    if not isinstance(values, dict):
        raise FslError(f"{source}: {where or 'the file'} must be a mapping of keys to values, got {shown(values)}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise FslError(f"{source}: unknown key {where}{shown(unknown[0])}; known keys are {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        if key == "encoder":
            value = _build(EncoderConfig, value, source, "encoder.")
        elif key == "train":
            value = None if value is None else _build(TrainConfig, value, source, "train.")
        elif key in ("method_options", "fusion_options") and not isinstance(value, dict):
            raise FslError(f"{source}: {where}{key} must be a mapping, got {shown(value)}")
        elif key == "sources":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise FslError(f"{source}: {where}sources must be a list of label columns, got {shown(value)}")
            value = tuple(value)
        elif key == "test_time_views":
            if (
                not isinstance(value, (list, tuple))
                or not set(value) <= set(TEST_TIME_VIEWS)
                or len(set(value)) < len(value)
            ):
                raise FslError(
                    f"{source}: {where}test_time_views must be a list of distinct views of {list(TEST_TIME_VIEWS)}, "
                    f"got {shown(value)}"
                )
            value = tuple(value)
        elif key == "val_episodes" and cls is AdaptConfig:
            if not isinstance(value, (str, list, tuple)) or not value:
                raise FslError(f"{source}: {where}val_episodes must be a name or a list of names, got {shown(value)}")
            value = tuple([value] if isinstance(value, str) else value)
            for name in value:
                safe_name(name, f"{source}: {where}val_episodes entry")
        elif key == "episodes":
            if not isinstance(value, (str, list, tuple)):
                raise FslError(f"{source}: {where}episodes must be a name or a list of names, got {shown(value)}")
            value = tuple([value] if isinstance(value, str) else value)
            for name in value:
                safe_name(name, f"{source}: {where}episodes entry")
            repeated = sorted({name for name in value if value.count(name) > 1})
            if repeated:  # a set listed twice would count its episodes twice and narrow the interval
                raise FslError(f"{source}: {where}episodes lists {shown(repeated[0])} more than once")
        else:
            value = _coerce(key, value)
            _check_value(key, value, source, where)
        kwargs[key] = value
    required = [f.name for f in dataclasses.fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    absent = [name for name in required if name not in kwargs]
    if absent:
        raise FslError(f"{source}: {where}{absent[0]} is missing; it has no default")
    return cls(**kwargs)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FslError(f"no experiment config at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise FslError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8 YAML") from None
    values = read_yaml(text, str(path)) or {}
    if isinstance(values, dict):
        values.setdefault("name", path.stem)
    return _build(ExperimentConfig, values, str(path), "")


Config = TypeVar("Config", ExperimentConfig, AdaptConfig)


def load_adapt_config(path: str | os.PathLike) -> AdaptConfig:
    """An `fsl adapt` recipe (YAML, safe_load without aliases); its name defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise FslError(f"no adaptation recipe at {path} (see experiments/adapt/)")
    values = read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if isinstance(values, dict):
        values.setdefault("name", path.stem)
    return _build(AdaptConfig, values, str(path), "")


def config_from_dict(values: dict, source: str) -> ExperimentConfig:
    """A config saved beside a checkpoint (dataclasses.asdict) back into its dataclass."""
    return _build(ExperimentConfig, values, source, "")


def parse_assignment(text: str, option: str = "assignment") -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", value typed as YAML types it: 10 -> int, 3e-4 -> float, [a, b] -> list).
    `option`: what an error calls the text (the CLI passes its flag, `--set`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise FslError(f"{option} {shown(text)}: expected KEY=VALUE, e.g. method_options.C=10")
    value = read_yaml(raw, f"{option} {shown(text)}") if raw.strip() else ""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as text; on the command line it means a number
    return key.strip(), value


def override(config: Config, assignments: list[tuple[str, Any]], source: str = "assignments") -> Config:
    """The config (an experiment or an adaptation recipe) with dotted keys set (`train.lr`,
    `method_options.C`), checked as a YAML file would be. `source`: what an error calls the
    assignments, a parameter's name (`grid`: the CLI puts its flag there) or the CLI's flag (`--set`).

    A changed config gets a changed name (`NAME--train.lr-0.0003`), so its results and checkpoints never
    overwrite the original's, unless `name` itself is set."""
    parameter = source if source.isidentifier() else None
    values = dataclasses.asdict(config)
    suffixes = []
    for key, value in assignments:
        parts = key.split(".")
        target = values
        for depth, part in enumerate(parts[:-1]):
            if part not in target and depth == 0:
                raise FslError(f"{source} {key}=...: unknown key {part!r}; known keys are {sorted(values)}", parameter)
            if target.get(part) is None:
                target[part] = {}
            if not isinstance(target[part], dict):
                raise FslError(f"{source} {key}=...: {'.'.join(parts[: depth + 1])} is not a section", parameter)
            target = target[part]
        target[parts[-1]] = value
        if key != "name":
            suffixes.append(re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{key}-{value}"))
    if suffixes and not any(key == "name" for key, _ in assignments):
        values["name"] = "--".join([config.name, *suffixes])
    try:
        return _build(type(config), values, source, "")
    except FslError as error:
        raise FslError(str(error), error.parameter or parameter) from None


def to_yaml(config: ExperimentConfig, header: str = "") -> str:
    """The resolved config as a YAML file `load_config` reads back (with `#` header lines)."""
    values = dataclasses.asdict(config)
    values["episodes"] = list(values["episodes"])
    if values["train"] is not None:  # no sources: the file reads as it did before they existed
        sources = values["train"].pop("sources")
        if sources:
            values["train"]["sources"] = list(sources)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.safe_dump(values, sort_keys=False)
