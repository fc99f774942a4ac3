"""Zero-shot classification from class names (Radford et al., 2021).

No support example is used: a query's logits are the cosine similarities of its features to the
class-name prompts embedded by the encoder's text tower. With CLIP the image side compares too;
with the offline pair (two separate spaces) only the product text can be compared to class names."""

from __future__ import annotations

import torch

from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.fusion import Fusion, ImageOnly
from fsl.methods.utils import Option


class ZeroShot(FewShotHead):
    """Zero-shot CLIP (Radford et al., ICML 2021): each query's logits are its cosines to the class-name
    prompts' text embeddings; the support set is not read.
    """

    name = "zero_shot"
    uses_class_names = True
    options = {
        "temperature": Option(float, "softmax temperature of the cosines", low=0, low_open=True),
    }
    needs_class_text = True

    def __init__(self, fusion: Fusion, shared_space: bool = False, temperature: float = 0.01):
        super().__init__(fusion)
        if isinstance(fusion, ImageOnly) and not shared_space:
            raise FslError(
                "zero-shot on image features needs an encoder whose image and text towers share "
                "one space (clip); with the offline pair use fusion: text"
            )
        self.shared_space, self.temperature = shared_space, temperature

    def classify(self, support, support_labels, query, n_way, class_text=None):
        if class_text is None:
            raise ValueError("zero_shot needs class_text [E, N, Dt]: the harness embeds the class names")
        classes = torch.nn.functional.normalize(self.class_features(class_text, self.shared_space), dim=-1)
        queries = torch.nn.functional.normalize(query, dim=-1)
        return queries @ classes.transpose(1, 2) / self.temperature  # [E, Q, N]
