"""SimpleShot (Wang, Chao, Weinberger & van der Maaten, 2019: "SimpleShot: Revisiting
Nearest-Neighbor Classification for Few-Shot Learning").

Centre every feature on the mean feature of the base classes (knowledge from base classes, no
training), L2-normalise it, and give each query the class of its nearest support centroid
(Euclidean). `centering: none` is the paper's L2N variant; the default, CL2N, is its best.
easyfsl's SimpleShot instead takes the cosine to the mean of the raw support features: at one shot
on unit-norm features both give the same predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion
from fsl.methods.utils import Option, mean_prototypes, squared_distances


class SimpleShot(FewShotHead):
    """SimpleShot (Wang et al., 2019): nearest class mean on centred, L2-normalised features."""

    name = "simpleshot"
    options = {
        "centering": Option(str, "subtract the base classes' mean feature, or nothing", choices=("base", "none")),
    }

    def __init__(self, fusion: Fusion, centering: str = "base"):
        super().__init__(fusion)
        self.centering = centering
        self.needs_base_classes = centering == "base"
        self.register_buffer("base_mean", torch.zeros(fusion.image_dim + fusion.text_dim))  # [D], set by fit_base

    def fit_base(self, features, labels):
        self.base_mean.copy_(features.double().mean(0).float())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(features - self.base_mean), dim=-1)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        return -squared_distances(query, mean_prototypes(support, support_labels, n_way))  # [E, Q, N]
