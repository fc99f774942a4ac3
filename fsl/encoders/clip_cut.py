"""open_clip's CLIP towers cut in two, as the offline image tower is (fsl/encoders/adapted.py): a frozen
bottom whose output tokens are cached once per product, and a top (the last `cut` transformer blocks,
the final norm, the pooling and the projection) that `fsl adapt` trains, with low-rank adapters on the
attention projections of each block (CLIP-LoRA's recipe: Zanella & Ben Ayed, CVPR-W 2024) or whole.

The text tower's causal mask lets a text's end-of-text token see only the tokens before it, so the
tokens after it never reach the pooled feature: they are cached as zeros and cut off at the longest
text of the catalog, and a text's end is its last position that is not all zeros."""

from __future__ import annotations

import torch
from torch import nn

from fsl.errors import FslError

TOWER_NAMES = ("image", "text")
# nn.MultiheadAttention, adapted by PEFT on its q, k, v (in_proj) and output (out_proj) projections
CLIP_LORA_TARGETS = ["attn"]


def blocks_of(model: nn.Module, tower: str) -> nn.ModuleList:
    """The residual attention blocks of one of a CLIP model's towers; a model whose towers this cut
    cannot follow (a ResNet image tower, attention pooling, a Hugging Face text tower) is an error."""
    if tower == "image":
        visual = getattr(model, "visual", None)
        transformer = getattr(visual, "transformer", None)
        if transformer is None or not hasattr(visual, "_embeds"):
            raise FslError(f"adapting the image tower needs a vision transformer; {type(visual).__name__} is not one")
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type not in ("tok", "avg"):
            raise FslError("adapting the image tower supports class-token or average pooling, not attention pooling")
    elif tower == "text":
        transformer = getattr(model, "transformer", None)
        if transformer is None or getattr(model, "text_pool_type", None) not in ("argmax", "eos"):
            raise FslError(
                "adapting the text tower supports open_clip's CLIP text transformer pooled at the end-of-text "
                f"token; {type(model).__name__} has another text tower"
            )
    else:
        raise FslError(f"a CLIP tower is one of {list(TOWER_NAMES)}, got {tower!r}")
    if not transformer.batch_first:
        raise FslError("cached tokens need a batch-first transformer (open_clip 2.24 and later build them so)")
    return transformer.resblocks


def check_clip_cut(model: nn.Module, tower: str, cut: int) -> int:
    depth = len(blocks_of(model, tower))
    if type(cut) is not int or not 1 <= cut <= depth:
        raise FslError(f"adapt cut must be a whole number of last transformer blocks from 1 to {depth}, got {cut!r}")
    return cut


class ClipImageTop(nn.Module):
    """The image tower from the input of its last `cut` blocks ([B, T, W] tokens) to the projected
    feature: those blocks, then the pooling, final norm and projection of open_clip's VisionTransformer."""

    def __init__(self, model: nn.Module, cut: int):
        super().__init__()
        self.cut = check_clip_cut(model, "image", cut)
        visual = model.visual
        self.blocks = nn.ModuleList(visual.transformer.resblocks[-cut:])
        self.ln_post, self.proj = visual.ln_post, visual.proj
        self.pool_type, self.final_ln_after_pool = visual.pool_type, visual.final_ln_after_pool

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for block in self.blocks:
            x = block(x)
        if not self.final_ln_after_pool:
            x = self.ln_post(x)
        pooled = x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1)
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return pooled if self.proj is None else pooled @ self.proj


class ClipTextTop(nn.Module):
    """The text tower from the input of its last `cut` blocks ([B, L, W] tokens, zeros after each text's
    end) to the projected feature: those blocks under the causal mask, the final norm, the end-of-text
    token and the projection of open_clip's CLIP.encode_text."""

    def __init__(self, model: nn.Module, cut: int):
        super().__init__()
        self.cut = check_clip_cut(model, "text", cut)
        self.blocks = nn.ModuleList(model.transformer.resblocks[-cut:])
        self.ln_final, self.text_projection = model.ln_final, model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ends = text_ends(tokens)
        length = tokens.shape[1]
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = tokens
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        pooled = self.ln_final(x)[torch.arange(len(x)), ends]
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


def text_ends(tokens: torch.Tensor) -> torch.Tensor:
    """[B, L, W] -> [B]: each text's end-of-text position, its last position that is not all zeros."""
    filled = tokens.abs().amax(dim=-1) > 0
    return (filled.cumsum(dim=1) * filled).argmax(dim=1)


TOPS = {"image": ClipImageTop, "text": ClipTextTop}


def clip_image_bottom(model: nn.Module, pixels: torch.Tensor, cut: int) -> torch.Tensor:
    """[B, 3, H, W] photos -> [B, T, W] tokens at the input of the image tower's last `cut` blocks."""
    blocks = blocks_of(model, "image")
    x = model.visual._embeds(pixels)
    for block in blocks[: len(blocks) - check_clip_cut(model, "image", cut)]:
        x = block(x)
    return x


def clip_text_bottom(model: nn.Module, token_ids: torch.Tensor, cut: int, length: int | None = None) -> torch.Tensor:
    """[B, context] token ids -> [B, length, W] tokens at the input of the text tower's last `cut` blocks,
    zeros after each text's end-of-text token. `length` (default: the whole context) cuts off the tokens
    after the longest text's end, which the causal mask keeps from every end before it."""
    blocks = blocks_of(model, "text")
    length = length or token_ids.shape[1]
    ends = text_end_positions(model, token_ids)
    token_ids = token_ids[:, :length]
    mask = None if model.attn_mask is None else model.attn_mask[:length, :length]
    x = model.token_embedding(token_ids) + model.positional_embedding[:length]
    for block in blocks[: len(blocks) - check_clip_cut(model, "text", cut)]:
        x = block(x, attn_mask=mask)
    after = torch.arange(length, device=x.device)[None, :] > ends[:, None]
    return x.masked_fill(after[:, :, None], 0.0)


def text_end_positions(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """[B, context] -> [B]: where each text's end-of-text token is, as the model's pooling finds it."""
    if model.text_pool_type == "argmax":
        return token_ids.argmax(dim=-1)
    return (token_ids == model.text_eos_id).int().argmax(dim=-1)
