"""The one factory: an encoder by name, its id without building it (a store's key), and the lazily
built encoder that warm commands never load."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

from fsl.config import EncoderConfig
from fsl.encoders.adapted import AdaptedEncoder, adapted_id
from fsl.encoders.aligned import AlignedEncoder, aligned_id
from fsl.encoders.base import Encoder
from fsl.encoders.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, ClipEncoder, resolve_clip_weights
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.paths import ONNX_DIR

logger = logging.getLogger(__name__)

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "clip": ClipEncoder,
    "offline": OfflineEncoder,
    "aligned": AlignedEncoder,
    "adapted": AdaptedEncoder,
}


def encoder_id(name: str = "offline", model: str | None = None, pretrained: str | None = None) -> str:
    """The id of the encoder `create_encoder` would build, without building it: a feature store's key."""
    if name == "offline":
        return OfflineEncoder.id
    if name == "clip":
        model = model or DEFAULT_CLIP_MODEL
        return f"clip:{model}:{resolve_clip_weights(model, pretrained or DEFAULT_CLIP_WEIGHTS)[1]}"
    if name == "aligned":
        return aligned_id(pretrained)
    if name == "adapted":
        return adapted_id(pretrained)
    raise FslError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")


def create_encoder(name: str = "offline", device: str = "cpu", **options) -> Encoder:
    """The one factory: `create_encoder("clip", model="ViT-B-32", pretrained="openai")`."""
    if name not in ENCODERS:
        raise FslError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    options = {k: v for k, v in options.items() if v is not None}
    return ENCODERS[name](device=device, **options)


class LazyEncoder:
    """The encoder a config names, built on first use: warm commands need only its id (the store
    key), so `fsl eval` and `fsl train` on a warm store never load weights."""

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.id = encoder_id(config.name, config.model, config.pretrained)
        self._built: Encoder | None = None
        self._runtime_chosen = False

    def __getattr__(self, name: str):  # only for what __init__ did not set: the model's own parts
        return getattr(self.load(images=name in ("embed_pixels", "encode_images")), name)

    def load(self, images: bool = True) -> Encoder:
        """The built encoder; with `images`, its image runtime chosen too (ONNX Runtime or eager). A
        server calls this before its first request; everything else, on first use."""
        if self._built is None:
            config = self.config
            options = (
                {"model": config.model, "pretrained": config.pretrained}
                if config.name == "clip"
                else {"pretrained": config.pretrained}
                if config.name in ("aligned", "adapted")
                else {}
            )
            self._built = create_encoder(config.name, device=config.device, **options)
        if images and not self._runtime_chosen:
            self._runtime_chosen = True
            if self.config.runtime != "eager" and self.config.device == "cpu":
                said = self._built.use_onnx(ONNX_DIR)
                if self.config.runtime == "onnx" and self._built.runtime is None:
                    raise FslError(f"runtime onnx was asked for, but: {said}")
                logger.info(f"{said}")
        return self._built


@lru_cache(maxsize=4)
def encoder_from_config(config: EncoderConfig) -> LazyEncoder:
    return LazyEncoder(config)


def shared_space(encoder_id: str) -> bool:
    """Whether image and text features live in one space (class-name texts compare with photos)."""
    return encoder_id.startswith(("clip:", "aligned:", "adapted:clip:"))
