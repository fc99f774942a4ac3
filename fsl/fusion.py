"""How an example's image and text features become the one vector a head sees.

The fixed fusions here need no training: image only, text only, and the concatenation of the
two unit vectors (each modality then weighs the same in a distance).
"""

from __future__ import annotations

import numpy as np

from fsl import FslError
from fsl.features import FeatureStore

FUSIONS = ("image", "text", "concat")


def fused_features(store: FeatureStore, fusion: str = "image", text_variant: str = "plain") -> np.ndarray:
    """[P, D] features of every product in the store (memory-mapped where no work is needed)."""
    if fusion == "image":
        return store.image
    if fusion == "text":
        return store.text(text_variant)
    if fusion == "concat":
        return np.concatenate([store.image, store.text(text_variant)], axis=1) / np.sqrt(2.0)
    raise FslError(f"unknown fusion {fusion!r}; choose one of {list(FUSIONS)}")
