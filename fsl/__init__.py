"""fsl: few-shot multimodal fashion classification on frozen CLIP features.

The data flow (DESIGN.md): Catalog -> FeatureStore -> EpisodeSet -> heads -> Results.
"""

__version__ = "0.1.0"


class FslError(Exception):
    """An error the user can fix; the CLI prints its message without a stack trace."""
