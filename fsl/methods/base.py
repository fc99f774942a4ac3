"""The head contract: batched over episodes, no state kept between calls.

support [E, N*K, D] with labels [E, N*K] in 0..N-1, query [E, Q, D] -> logits [E, Q, N], where
D = image_dim + text_dim. A head is `classify(embed(support), labels, embed(query))`: `embed` works
on each example alone (the head's own Fusion, maybe a projection), so the harness embeds every
example of an episode set once. Heads that read class names also get class_text [E, N, Dt]."""


from __future__ import annotations

import math

import torch
from torch import nn

from fsl.errors import FslError
from fsl.methods.fusion import Fusion


def check_positive(head: str, allow_zero: bool = False, **options) -> None:
    """Refuse a non-numeric, infinite or out-of-range option before any episode runs: a YAML typo
    (`lr: 1e-4` read as text, a negative step count) must not reach the maths."""
    for name, value in options.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise FslError(f"{head} {name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


def inner_products(query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """query [E, Q, D] · rows [E, N, D] -> [E, Q, N], computed as (R Qᵀ)ᵀ: with few rows (classes)
    BLAS runs it about twice as fast as Q Rᵀ on a batch of 15-way episodes (measured); contiguous,
    so the argmax that usually follows reads it 3x faster."""
    return (rows @ query.transpose(1, 2)).transpose(1, 2).contiguous()


class FewShotHead(nn.Module):
    """Base of every head. Meta-parameters (projection, initialisation, a fusion gate) are ordinary
    parameters, so train.py optimises whatever a head registers."""

    needs_class_text = False
    needs_base_classes = False  # True for heads that learn statistics of the base classes (fit_base)
    transductive = False  # True for heads that read all queries of an episode together: reported apart

    def __init__(self, fusion: Fusion):
        super().__init__()
        self.fusion = fusion

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int, class_text: torch.Tensor | None = None) -> torch.Tensor:
        """Raw [image | text] support [E, N*K, D] and query [E, Q, D] -> logits [E, Q, N]."""
        return self.classify(self.embed(support), support_labels, self.embed(query), n_way, class_text)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D']: what a head does to each example on its own (the fusion, maybe a
        projection). The harness embeds every example of an episode set once, then classifies."""
        return self.fusion(features)

    def classify(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                 n_way: int, class_text: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded support [E, N*K, D'] and query [E, Q, D'] -> logits [E, Q, N]."""
        raise NotImplementedError

    def fit_base(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Statistics of the base-class products ([n, D] raw features, [n] class indices): knowledge
        from base classes, never from a validation or novel class (the pipeline passes only those)."""

    @property
    def meta_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    @staticmethod
    def prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """Mean support feature per class: [E, N*K, D] -> [E, N, D]."""
        one_hot = nn.functional.one_hot(support_labels, n_way).to(support.dtype)  # [E, N*K, N]
        return one_hot.transpose(1, 2) @ support / one_hot.sum(dim=1).unsqueeze(-1)

    def class_features(self, class_text: torch.Tensor, shared_space: bool) -> torch.Tensor:
        """Class-name text embeddings [E, N, Dt] as fused features: the text slot always, the image
        slot too where image and text share one space (CLIP)."""
        image = class_text if shared_space else torch.zeros(*class_text.shape[:-1], self.fusion.image_dim)
        return self.fusion(torch.cat([image, class_text], dim=-1))
