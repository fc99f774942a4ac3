"""fsl: few-shot multimodal fashion classification on frozen encoder features.

The data flow (docs/design.md): Catalog -> FeatureStore -> EpisodeSet -> heads -> Results.
"""

from fsl.errors import FslError

__version__ = "0.1.0"
__all__ = ["FslError", "__version__"]
