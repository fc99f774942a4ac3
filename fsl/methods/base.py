"""The head contract: batched over episodes, no state kept between calls.

support [E, N*K, D] with labels [E, N*K] in 0..N-1, query [E, Q, D] -> logits [E, Q, N], where
D = image_dim + text_dim. A head is `classify(embed(support), labels, embed(query))`: `embed` works
on each example alone (the head's own Fusion, maybe a projection), so the harness embeds every
example of an episode set once. Heads that read class names also get class_text [E, N, Dt]."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, describe_options


class FewShotHead(nn.Module, ABC):
    """Base of every head. Meta-parameters (projection, initialisation, a fusion gate) are ordinary
    parameters, so the harness's training job optimises whatever a head registers.

    A head declares on its class its registry `name` and its capabilities: `transductive` (it reads
    every query of an episode together: reported apart from the inductive heads) and
    `uses_class_names` (it may compare class-name texts to features, so it is told whether the
    encoder's image and text towers share one space). Per instance, from its options:
    `needs_class_text` (this configuration reads class names) and `needs_base_classes` (it learns
    statistics of the base classes through `fit_base`)."""

    name: str = ""
    transductive: bool = False
    uses_class_names: bool = False
    options: ClassVar[dict[str, Option]] = {}  # every YAML option (method_options), declared once
    needs_class_text = False
    needs_base_classes = False

    def __init_subclass__(cls, **kwargs):
        """The class docstring ends with its options, written from the declarations."""
        super().__init_subclass__(**kwargs)
        if cls.name:
            cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + describe_options(
                cls.options, "Options (`method_options` in a config):"
            )

    def __init__(self, fusion: Fusion):
        super().__init__()
        self.fusion = fusion

    def forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        n_way: int,
        class_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw [image | text] support [E, N*K, D] and query [E, Q, D] -> logits [E, Q, N]."""
        return self.classify(self.embed(support), support_labels, self.embed(query), n_way, class_text)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D']: what a head does to each example on its own (the fusion, maybe a
        projection). The harness embeds every example of an episode set once, then classifies."""
        return self.fusion(features)

    @abstractmethod
    def classify(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        n_way: int,
        class_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedded support [E, N*K, D'] and query [E, Q, D'] -> logits [E, Q, N]."""

    def fit_base(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Statistics of the base-class products ([n, D] raw features, [n] class indices): knowledge
        from base classes, never from a validation or novel class (the harness passes only those)."""

    @property
    def meta_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def class_features(self, class_text: torch.Tensor, shared_space: bool) -> torch.Tensor:
        """Class-name text embeddings [E, N, Dt] as fused features: the text slot always, the image
        slot too where image and text share one space (CLIP)."""
        image = class_text if shared_space else torch.zeros(*class_text.shape[:-1], self.fusion.image_dim)
        return self.fusion(torch.cat([image, class_text], dim=-1))
