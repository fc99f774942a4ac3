"""How an example's image and text features become the one vector a head sees.

Every head gets features [..., image_dim + text_dim] (image then text, both unit vectors) and
starts with a Fusion that maps them to its own space, so an ablation is one YAML line
(`fusion: gate`) and a learned fusion trains with the head's other meta-parameters."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from fsl.errors import FslError
from fsl.methods.utils import Option, check_options


class Fusion(nn.Module):
    """Splits [..., image_dim + text_dim] into its two parts; subclasses combine them. Each declares
    its YAML options (`fusion_options`), checked by `create_fusion` before it is built."""

    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, image_dim: int, text_dim: int):
        super().__init__()
        self.image_dim, self.text_dim = image_dim, text_dim

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.shape[-1] != self.image_dim + self.text_dim:
            raise FslError(
                f"fusion expects {self.image_dim} + {self.text_dim} feature columns, "
                f"got {features.shape[-1]}: features from another encoder?"
            )
        return features[..., : self.image_dim], features[..., self.image_dim :]

    @property
    def out_dim(self) -> int:
        raise NotImplementedError


class ImageOnly(Fusion):
    out_dim = property(lambda self: self.image_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.split(features)[0]


class TextOnly(Fusion):
    out_dim = property(lambda self: self.text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.split(features)[1]


class Concat(Fusion):
    """[√w·image, √(1-w)·text]: squared distances become w·d_image + (1-w)·d_text."""

    options = {"image_weight": Option(float, "w, the image's share of a squared distance", low=0, high=1)}

    out_dim = property(lambda self: self.image_dim + self.text_dim)

    def __init__(self, image_dim: int, text_dim: int, image_weight: float = 0.5):
        super().__init__(image_dim, text_dim)
        self.image_weight = image_weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image, text = self.split(features)
        return torch.cat([math.sqrt(self.image_weight) * image, math.sqrt(1 - self.image_weight) * text], dim=-1)


class WeightedSum(Fusion):
    """w·image + (1-w)·text in one space; where the dims differ, text is first projected
    (a learned linear map, initialised to zero-padding) to the image size. w is learned too."""

    options = {"image_weight": Option(float, "the starting w (learned)", low=0, high=1, low_open=True, high_open=True)}

    out_dim = property(lambda self: self.image_dim)

    def __init__(self, image_dim: int, text_dim: int, image_weight: float = 0.5):
        super().__init__(image_dim, text_dim)
        self.weight_logit = nn.Parameter(torch.tensor(math.log(image_weight / (1 - image_weight))))
        self.project = nn.Identity() if image_dim == text_dim else nn.Linear(text_dim, image_dim, bias=False)
        if isinstance(self.project, nn.Linear):
            with torch.no_grad():
                self.project.weight.copy_(torch.eye(image_dim, text_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image, text = self.split(features)
        weight = torch.sigmoid(self.weight_logit)
        return weight * image + (1 - weight) * self.project(text)


class Gate(Fusion):
    """A learned per-example gate g = σ(MLP([image, text])) that weighs the two modalities:
    [√g·image, √(1-g)·text]. Starts as Concat with the same image_weight for every example."""

    options = {
        "hidden": Option(int, "width of the gate's hidden layer", low=1),
        "image_weight": Option(float, "every example's starting gate", low=0, high=1, low_open=True, high_open=True),
    }

    out_dim = property(lambda self: self.image_dim + self.text_dim)

    def __init__(self, image_dim: int, text_dim: int, hidden: int = 64, image_weight: float = 0.5):
        super().__init__(image_dim, text_dim)
        self.gate = nn.Sequential(nn.Linear(image_dim + text_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.constant_(self.gate[-1].bias, math.log(image_weight / (1 - image_weight)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image, text = self.split(features)
        gate = torch.sigmoid(self.gate(features))
        return torch.cat([gate.sqrt() * image, (1 - gate).sqrt() * text], dim=-1)


FUSIONS = {"image": ImageOnly, "text": TextOnly, "concat": Concat, "weighted": WeightedSum, "gate": Gate}


def create_fusion(name: str, image_dim: int, text_dim: int, **options) -> Fusion:
    if name not in FUSIONS:
        raise FslError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return FUSIONS[name](image_dim, text_dim, **check_options(f"fusion {name}", FUSIONS[name].options, options))
