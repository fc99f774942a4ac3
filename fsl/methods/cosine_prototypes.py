"""Cosine similarity to each class's mean image feature and mean text feature, weighted by the
fusion's image weight (the demo answers a text-only query with it at image weight 0), batched so
that it is evaluated and calibrated (`fsl calibrate`) on the same frozen episodes as every other
head. Prototypical-network
scoring with cosine similarity (Snell et al., 2017; Chen et al., ICLR 2019, "A Closer Look at
Few-shot Classification") kept per modality. Nothing to train."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Concat, Fusion, ImageOnly
from fsl.methods.utils import inner_products, mean_prototypes


class CosinePrototypes(FewShotHead):
    """Cosine prototypes per modality (Snell et al., 2017; Chen et al., ICLR 2019): cosine to each
    class's mean image and mean text feature, weighted by the fusion's image weight.
    """

    name = "cosine_prototypes"
    options = {}

    def __init__(self, fusion: Fusion):
        super().__init__(fusion)
        if not isinstance(fusion, (Concat, ImageOnly)):
            raise FslError("cosine_prototypes compares image and text apart: use fusion image or concat")
        self.image_weight = fusion.image_weight if isinstance(fusion, Concat) else 1.0

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The parts compared: raw [image | text] under concat (each part is compared apart), the image
        part alone under image fusion. What the "none of these" scores read, so an image-only head is
        calibrated on the features it answers with: a support folder has no text part at all."""
        return features if isinstance(self.fusion, Concat) else self.fusion(features)

    def classify(self, support, support_labels, query, n_way, class_text=None):
        """Cosines lie in [-1, 1]: `fsl calibrate` fits the temperature that makes them confidences."""
        if isinstance(self.fusion, Concat):
            weights = (self.image_weight, 1 - self.image_weight)
            parts = zip(self.fusion.split(support), self.fusion.split(query), weights)
        else:
            parts = [(support, query, 1.0)]
        scores = 0.0
        for support_part, query_part, weight in parts:
            if weight:
                prototypes = F.normalize(mean_prototypes(support_part, support_labels, n_way), dim=-1)  # [E, N, Dp]
                scores = scores + weight * inner_products(query_part, prototypes)  # [E, Q, N]
        return scores
