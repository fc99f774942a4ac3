"""An encoder's towers exported to ONNX and run by ONNX Runtime, adopted only where their features
agree with eager PyTorch's."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fsl.files import atomic_path
from fsl.paths import onnx_path

logger = logging.getLogger(__name__)

MIN_COSINE = 0.999  # an accelerated tower is used only if its features agree with eager's this well


class Towers(Protocol):
    """What an export needs of an encoder (fsl.encoders.base.Encoder has it all)."""

    id: str
    image_transform: Callable[[Image.Image], torch.Tensor]

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def _embed_texts(self, texts: list[str]) -> torch.Tensor: ...

    def text_tower(self) -> tuple[torch.nn.Module, Callable[[list[str]], dict[str, np.ndarray]]] | None: ...


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
    def load(cls, encoder: Towers, cache_dir: Path) -> OnnxImageTower:
        class Tower(torch.nn.Module):
            def forward(self, pixels):
                return encoder._embed_pixels(pixels)

        def export(path: Path) -> None:
            example = (torch.zeros(2, 3, *_input_size(encoder)),)
            _export(Tower().eval(), example, path, ["pixels"], {"pixels": {0: "batch"}, "features": {0: "batch"}})

        probe = torch.randn(4, 3, *_input_size(encoder), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            eager = F.normalize(encoder._embed_pixels(probe).float(), dim=-1)

        def agree(session) -> str:
            fast = torch.from_numpy(session.run(None, {"pixels": probe.numpy()})[0])
            return f"{agreement(eager, fast)} on a probe batch"

        return cls(*checked_session(onnx_path(encoder.id, "", cache_dir), export, agree))


class OnnxTextTower:
    """An encoder's text tower (`Encoder.text_tower`) exported to ONNX and run by ONNX Runtime, with
    its own tokenizer in front (benchmarks/embed_speed.py measures it against eager sentence-transformers).
    Exported once per encoder id; checked against eager before use."""

    def __init__(self, session, tokenize, agreement: str):
        self.session, self.tokenize, self.agreement = session, tokenize, agreement

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, self.tokenize(texts))[0])

    @classmethod
    def load(cls, encoder: Towers, cache_dir: Path) -> OnnxTextTower:
        module, tokenize = encoder.text_tower()
        probe = ["Puma Men Grey T-shirt (Men, Grey, Casual)", "gold wrist watch", "a"]

        def export(path: Path) -> None:
            example = {name: torch.from_numpy(array) for name, array in tokenize(probe[:2]).items()}
            axes = {**{name: {0: "batch", 1: "tokens"} for name in example}, "features": {0: "batch"}}
            _export(module, tuple(example.values()), path, list(example), axes)

        with torch.inference_mode():
            eager = F.normalize(encoder._embed_texts(probe).float(), dim=-1)

        def agree(session) -> str:
            return f"{agreement(eager, torch.from_numpy(session.run(None, tokenize(probe))[0]))} on probe texts"

        session, said = checked_session(onnx_path(encoder.id, "-text", cache_dir), export, agree)
        return cls(session, tokenize, said)


def checked_session(path: Path, export: Callable[[Path], None], agree: Callable) -> tuple[object, str]:
    """(an ONNX Runtime session of the export at `path`, what `agree` said of it), exporting first
    where there is none. A cached export that no longer agrees with eager (the weights or a library
    changed since it was written) is exported again, once, instead of being given up on every run."""
    fresh = not path.is_file()
    if fresh:
        export(path)
    try:
        session = _session(path)
        return session, agree(session)
    except (OnnxMismatch, RuntimeError, ValueError) as error:
        if fresh:
            raise
        logger.warning(f"the cached {path.name} is stale ({str(error)[:120]}); exporting it again")
        path.unlink()
        export(path)
        session = _session(path)
        return session, f"{agree(session)}, re-exported"


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


def _input_size(encoder: Towers) -> tuple[int, int]:
    probe = encoder.image_transform(Image.new("RGB", (64, 64)))
    return int(probe.shape[-2]), int(probe.shape[-1])


def _export(module: torch.nn.Module, example: tuple, path: Path, input_names: list[str], dynamic_axes: dict) -> None:
    """torch.onnx.export of a tower with dynamic axes (output "features"), written atomically."""

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    chatter = io.StringIO()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(tmp),
                input_names=input_names,
                output_names=["features"],
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
    except Exception as error:  # the exporter raises many kinds; each means "stay in eager"
        raise RuntimeError(f"it could not be exported to ONNX: {str(error).splitlines()[0]}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
