"""open_clip: the backbone this project is about (any model; a pretrained tag, an `hf-hub:` id or a
local checkpoint file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fsl.encoders.base import Encoder, _freeze, pad_to_square
from fsl.errors import FslError

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
RANDOM_WEIGHTS = ("none", "random")
DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS = "ViT-B-32", "openai"


def resolve_clip_weights(model: str, pretrained: str | None) -> tuple[str | None, str]:
    """(what open_clip's pretrained= gets, a content-based id for the weights); loads nothing."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS)  # FSL-Tiny, for tests and smoke runs
    if model.startswith("hf-hub:"):
        return None, "hf-hub"  # the hub id names the weights; open_clip fetches them
    if pretrained is None or str(pretrained).lower() in RANDOM_WEIGHTS:
        return None, "random"
    if Path(pretrained).is_file():
        return str(pretrained), f"file-{file_digest(Path(pretrained))}"
    if model not in open_clip.list_models():
        raise FslError(f"unknown CLIP model {model!r}; see open_clip.list_models() (e.g. ViT-B-32)")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise FslError(
            f"{pretrained!r} is neither a pretrained tag of {model} ({', '.join(tags) or 'none'}) "
            "nor an existing checkpoint file"
        )
    return pretrained, pretrained


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class ClipEncoder(Encoder):
    """open_clip: the backbone this project is about."""

    def __init__(
        self, model: str = DEFAULT_CLIP_MODEL, pretrained: str | None = DEFAULT_CLIP_WEIGHTS, device: str = "cpu"
    ):
        import open_clip
        from torchvision import transforms

        self.device = torch.device(device)
        weights, weights_id = resolve_clip_weights(model, pretrained)
        if weights is None:
            torch.manual_seed(0)  # random weights, but the same ones every run
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=weights, device=self.device)
            self.tokenizer = open_clip.get_tokenizer(model)
        except Exception as error:  # open_clip and the hub raise many kinds; all mean "no weights"
            raise FslError(
                f"could not load CLIP model {model!r} with weights {pretrained!r}: {error}\n"
                "Without internet, download the checkpoint elsewhere and pass its local file "
                "(--pretrained /path/open_clip_model.safetensors), or use --encoder offline. "
                "Set HF_HUB_OFFLINE=1 to fail fast instead of retrying the hub."
            ) from None
        self.model = _freeze(clip)
        self.image_transform = transforms.Compose([transforms.Lambda(pad_to_square), preprocess])
        self.id = f"clip:{model}:{weights_id}"
        self.image_dim = self.text_dim = self._probe_dim()  # CLIP: one shared space

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return int(self.model.encode_text(self.tokenizer(["probe"])).shape[-1])

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device)).cpu()

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).cpu()
