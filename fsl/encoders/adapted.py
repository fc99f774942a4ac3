"""Towers cut in two: a frozen bottom whose output is cached once per product, and a top that `fsl adapt`
trains on base classes. The offline image tower's top is its last MBConv block(s) and head convolution,
its text tower's (MiniLM) its last transformer layer(s) (both here); a CLIP tower's, its last
transformer blocks (fsl/encoders/clip_cut.py). This module holds the cuts, the adapted weights'
load/save (safetensors + sidecar, digest) and the encoder that applies them; the training job is
fsl/harness/adapt.py.

Padding never reaches a text's feature (MiniLM's attention mask and mean pooling leave it out; CLIP's
causal mask keeps it from the end-of-text token), so cached text tokens hold zeros there and a
text's tokens are its positions that are not all zeros."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from fsl.encoders.base import Encoder
from fsl.encoders.clip import ClipEncoder
from fsl.encoders.clip_cut import TOPS, TOWER_NAMES
from fsl.encoders.offline import OfflineEncoder
from fsl.errors import FslError
from fsl.files import atomic_path, check_record, read_json, write_json
from fsl.paths import split_root

TOWERS = OfflineEncoder.id
MAX_CUT = 6  # the last six MBConv blocks of EfficientNet-Lite0 all run at 7x7 (blocks 10-15)
TEXT_LAYERS = 6  # all-MiniLM-L6-v2's transformer layers
WEIGHTS_FILE, SIDECAR_FILE = "top.safetensors", "adapt.json"


def check_cut(cut: int) -> int:
    if type(cut) is not int or not 1 <= cut <= MAX_CUT:
        raise FslError(f"adapt cut must be a whole number of last MBConv blocks from 1 to {MAX_CUT}, got {cut!r}")
    return cut


def check_text_cut(cut: int) -> int:
    if type(cut) is not int or not 1 <= cut <= TEXT_LAYERS:
        raise FslError(f"adapt cut must be a whole number of MiniLM's last layers from 1 to {TEXT_LAYERS}, got {cut!r}")
    return cut


class ImageTop(nn.Module):
    """EfficientNet-Lite0 from the input of its last `cut` MBConv blocks to the pooled 1280-d feature:
    those blocks, the head convolution and its batch norm, then the mean over the 7x7 map (what
    OfflineEncoder._embed_pixels computes). Batch norms keep their ImageNet statistics."""

    def __init__(self, model: nn.Module, cut: int):
        super().__init__()
        self.cut = check_cut(cut)
        self.blocks = nn.ModuleList(model._blocks[-cut:])
        self.conv_head, self.bn_head, self.act = model._conv_head, model._bn1, model._swish

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        x = activations
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn_head(self.conv_head(x))).mean(dim=(2, 3))

    def train(self, mode: bool = True) -> ImageTop:
        """Always in inference mode (ImageNet's batch-norm statistics; no drop-connect): a batch of an
        episode's few dozen maps would make poor statistics, and the weights must mean the same at test time."""
        return super().train(False)


@torch.no_grad()
def top_features(top: nn.Module, activations: np.ndarray, rows: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The top's features of the given catalog rows ([R, 1280] for the offline image tower), unnormalised."""
    out = [
        top(torch.from_numpy(np.asarray(activations[rows[i : i + batch]], dtype=np.float32)))
        for i in range(0, len(rows), batch)
    ]
    return torch.cat(out) if out else torch.empty(0, 1280)


class TextTop(nn.Module):
    """MiniLM from the input of its last `cut` layers ([B, L, 384] token states, zeros at padding) to the
    384-d feature sentence-transformers computes: those layers under the attention mask the zeros
    give, then the mean over the text's tokens."""

    def __init__(self, text_model: nn.Module, cut: int):
        super().__init__()
        self.cut = check_text_cut(cut)
        bert = text_model[0].auto_model
        self.layers = nn.ModuleList(bert.encoder.layer[-cut:])
        self.bert_config = bert.config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        present = tokens.abs().amax(dim=-1) > 0
        mask = create_bidirectional_mask(config=self.bert_config, inputs_embeds=tokens, attention_mask=present.long())
        x = tokens
        for layer in self.layers:
            x = layer(x, attention_mask=mask)
            x = x[0] if isinstance(x, tuple) else x
        weights = present.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1e-9)

    def train(self, mode: bool = True) -> TextTop:
        """Always in inference mode (no dropout): the weights must mean the same at test time."""
        return super().train(False)


def text_bottom(text_model: nn.Module, token_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int) -> torch.Tensor:
    """MiniLM's embeddings and all but its last `cut` layers: [B, L] token ids -> [B, L, 384] token
    states at the cut, zeros at padding."""
    bert = text_model[0].auto_model
    x = bert.embeddings(input_ids=token_ids)
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=x, attention_mask=attention_mask)
    for layer in bert.encoder.layer[: TEXT_LAYERS - check_text_cut(cut)]:
        x = layer(x, attention_mask=mask)
        x = x[0] if isinstance(x, tuple) else x
    return x.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)


class Tops(nn.Module):
    """The tops of a pair's adapted towers at one cut (`image`, `text` or both), the towers' own modules:
    loading weights into them changes the towers in place. Saved with keys `tops.image.*`, `tops.text.*`."""

    def __init__(self, tops: dict[str, nn.Module]):
        super().__init__()
        self.tops = nn.ModuleDict(tops)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{tower: its cached activations} -> {tower: [B, D] features}, unnormalised."""
        return {tower: self.tops[tower](values) for tower, values in inputs.items()}

    def train(self, mode: bool = True) -> Tops:
        """Always in inference mode: the weights must mean the same at test time."""
        return super().train(False)


def cut_tops(encoder: Encoder, cut: int, towers: list[str], copy_weights: bool = False) -> Tops:
    """The tops of `encoder`'s `towers` at `cut`: its own modules (changed by whatever changes the tops),
    or with `copy_weights` a copy of them (to train while the encoder stays frozen)."""
    if not towers or not set(towers) <= set(TOWER_NAMES) or len(set(towers)) < len(towers):
        raise FslError(f"adapted towers must be some of {list(TOWER_NAMES)}, got {towers!r}")
    if isinstance(encoder, OfflineEncoder):
        sources, classes = (
            {"image": encoder.image_model, "text": encoder.text_model},
            {"image": ImageTop, "text": TextTop},
        )
    else:
        sources, classes = {"image": encoder.model, "text": encoder.model}, TOPS
    if copy_weights:
        sources = copy.deepcopy(sources)  # one copy of a model both towers share
    return Tops({tower: classes[tower](sources[tower], cut) for tower in TOWER_NAMES if tower in towers})


def image_bottom(model: nn.Module, pixels: torch.Tensor, cut: int) -> torch.Tensor:
    """EfficientNet-Lite0's stem and all but its last `cut` MBConv blocks: the activations at the cut
    ([B, C, 7, 7]), as extract_features computes them in inference mode."""
    x = model._swish(model._bn0(model._conv_stem(pixels)))
    for block in model._blocks[: len(model._blocks) - check_cut(cut)]:
        x = block(x)
    return x


class AdaptedEncoder(Encoder):
    """A pair of towers with the tops `fsl adapt` trained (LoRA adapters merged into them) in place of
    their own: the offline pair's or a CLIP model's, one tower or both (a tower that did not learn is
    the frozen one); the frozen towers are rebuilt from what the sidecar names."""

    def __init__(self, device: str = "cpu", pretrained: str | None = None):
        if not pretrained:
            raise FslError("the adapted encoder needs --pretrained checkpoints/adapt/NAME/best (from `fsl adapt`)")
        state, self.adaptation = load_adaptation(pretrained)
        self.id = adapted_id(pretrained)
        if self.adaptation["towers"] == TOWERS:
            self.base = OfflineEncoder(device)
            adapted = self.adaptation.get("adapted")
            source = self.base.image_model if adapted is None else self.base
            self.top = adapted_top(source, state, self.adaptation["cut"], pretrained, adapted)
        else:
            clip = self.adaptation["encoder"]
            self.base = ClipEncoder(clip["model"], clip.get("pretrained"), device)
            if self.base.id != self.adaptation["towers"]:
                raise FslError(
                    f"{pretrained} adapts {self.adaptation['towers']}, but its weights now load as {self.base.id} "
                    "(the checkpoint file changed?); adapt again"
                )
            self.top = adapted_top(self.base, state, self.adaptation["cut"], pretrained, self.adaptation["adapted"])
        self.top.requires_grad_(False).eval()
        self.image_dim, self.text_dim = self.base.image_dim, self.base.text_dim
        self.image_transform = self.base.image_transform

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's own forward: the top's modules are the model's, their weights replaced in place,
        so eager and the ONNX export (keyed by this encoder's id) both run bottom + adapted top."""
        return self.base._embed_pixels(pixels)

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.base._embed_texts(texts)

    def text_tower(self):
        return self.base.text_tower()


def tops_by_tower(top: ImageTop | Tops) -> dict[str, nn.Module]:
    """An adapted top's modules by tower name: the first layout (a plain ImageTop) is the image tower's."""
    return {"image": top} if isinstance(top, ImageTop) else dict(top.tops.items())


# Checkpoints -----------------------------------------------------------------------------------


def save_adaptation(folder: Path, top: nn.Module, meta: dict) -> None:
    """The top's weights (LoRA adapters merged into them; ImageTop or Tops) and the sidecar naming
    the towers, cut, mode, objective, split and the weights' sha256; a NaN anywhere refuses the save."""
    state = {k: v.detach().contiguous().clone() for k, v in top.state_dict().items()}
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        raise FslError(f"refusing to save {folder}: the adapted weights hold NaN or infinite values")
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    write_json(folder / SIDECAR_FILE, {**meta, "weights_sha256": digest})


def load_adaptation(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The top's weights and their sidecar; a missing or damaged one (its sha256, finite values) is an
    error naming the folder."""
    folder = Path(folder)
    weights, sidecar = folder / WEIGHTS_FILE, folder / SIDECAR_FILE
    if not (weights.is_file() and sidecar.is_file()):
        raise FslError(
            f"no adaptation at {folder} (expected {WEIGHTS_FILE} + {SIDECAR_FILE}); train one with `fsl adapt`"
        )
    fields = {"towers": (str,), "cut": (int,), "mode": (str,), "objective": (str,), "split_seed": (int,),
              "label_column": (str,), "catalog_fingerprint": (str,)}  # fmt: skip
    meta = check_record(
        read_json(sidecar, "adaptation sidecar"), fields, sidecar, "adaptation sidecar", "adapt again with --restart"
    )
    adapted = meta.get("adapted")  # absent: the offline image tower alone (the first adaptations' layout)
    if adapted is not None and not (isinstance(adapted, list) and adapted and set(adapted) <= set(TOWER_NAMES)):
        raise FslError(f"{sidecar} names no towers it adapted ({adapted!r}); it is damaged. Adapt again")
    if meta["towers"] == TOWERS:
        if adapted is None or "image" in adapted:
            check_cut(meta["cut"])
        else:
            check_text_cut(meta["cut"])
    elif meta["towers"].startswith("clip:"):
        clip = meta.get("encoder")
        if not (isinstance(clip, dict) and isinstance(clip.get("model"), str) and adapted is not None):
            raise FslError(f"{sidecar} adapts CLIP towers but does not say which model or towers; adapt again")
    else:
        raise FslError(f"{folder} adapts the towers {meta['towers']!r}, neither {TOWERS!r} nor a CLIP model's")
    recorded = meta.get("weights_sha256")  # (absent from adaptations saved before it was recorded)
    if recorded is not None and hashlib.sha256(weights.read_bytes()).hexdigest() != recorded:
        raise FslError(f"{weights} does not match the sha256 recorded in {SIDECAR_FILE}; it is damaged. Adapt again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise FslError(f"{weights} cannot be loaded ({type(error).__name__}); it is damaged. Adapt again") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FslError(f"{weights} holds NaN or infinite weights ({bad[0]}); it is damaged. Adapt again")
    return state, meta


def adaptation_classes(folder: str | os.PathLike) -> str:
    """The classes an adaptation trained on, as its sidecar says: "base" (its split's; also an older
    sidecar's), "selection" (every class but the split's novel ones), "all", or "fold"."""
    sidecar = Path(folder) / SIDECAR_FILE
    if not sidecar.is_file():
        raise FslError(f"no adaptation at {folder} (expected {SIDECAR_FILE}); train one with `fsl adapt`")
    return str(read_json(sidecar, "adaptation sidecar").get("classes", "base"))


def adapted_top(
    source: nn.Module | Encoder,
    state: dict[str, torch.Tensor],
    cut: int,
    folder: str | os.PathLike,
    towers: list[str] | None = None,
    copy_weights: bool = False,
) -> ImageTop | Tops:
    """The top at `cut` holding an adaptation's weights: without `towers`, the offline image model's
    (`source`); with them, those towers' of the encoder `source` (cut_tops). Its own modules, changed in
    place, unless `copy_weights`; weights of other names or shapes than that top's are an error naming
    the folder."""
    if towers is None:
        top = ImageTop(copy.deepcopy(source) if copy_weights else source, cut)
    else:
        top = cut_tops(source, cut, towers, copy_weights)
    try:
        top.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).split("\n\t", 1)[-1].splitlines()[0][:200]
        raise FslError(
            f"{Path(folder) / WEIGHTS_FILE} does not fit the towers' last {cut} block(s) ({detail}); it is damaged "
            "or from another model. Adapt again"
        ) from None
    return top


def adaptation_digest(folder: str | os.PathLike) -> str:
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise FslError(f"no adaptation at {folder} (expected {WEIGHTS_FILE}); train one with `fsl adapt`")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def adapted_id(pretrained: str | os.PathLike | None) -> str:
    """The adapted encoder's id: the frozen towers' (`efficientnet-lite0+...` for the offline pair,
    `clip:MODEL:WEIGHTS` for CLIP, as the sidecar names them) and the adapted weights' digest."""
    if not pretrained:
        raise FslError("the adapted encoder needs --pretrained checkpoints/adapt/NAME/best (from `fsl adapt`)")
    digest = adaptation_digest(pretrained)
    sidecar = Path(pretrained) / SIDECAR_FILE
    towers = read_json(sidecar, "adaptation sidecar").get("towers") if sidecar.is_file() else None
    if isinstance(towers, str) and towers.startswith("clip:"):
        return f"adapted:{towers}:{digest}"
    return f"adapted:{TOWERS.removeprefix('offline:')}:{digest}"


def adaptation_for_split(pretrained: str | os.PathLike, split_seed: int) -> str:
    """An adaptation is trained per class split, its checkpoints laid out as `fsl train`'s: a config's
    `checkpoints/adapt/NAME/best` names split 0's, and split s reads `checkpoints/adapt/split<s>/NAME/best`.
    A folder whose sidecar already names split s (a split's own path, a class-fold tower) is that split's."""
    best = Path(pretrained)
    sidecar = best / SIDECAR_FILE
    if sidecar.is_file() and read_json(sidecar, "adaptation sidecar").get("split_seed") == split_seed:
        return str(best)
    return str(split_root(best.parent.parent, split_seed) / best.parent.name / best.name)
