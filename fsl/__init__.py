"""fsl: few-shot multimodal fashion classification on frozen encoder features.

The data flow (docs/design.md): Catalog -> FeatureStore -> EpisodeSet -> heads -> Results.

The Python API for your own categories (fsl/apps/classifier.py):

    import fsl
    clf = fsl.FewShotClassifier.from_folder("support")
    answers = clf.predict(["query/a.jpg"])
"""

from fsl.errors import FslError

__version__ = "0.1.0"
__all__ = ["FewShotClassifier", "FslError", "__version__"]


def __getattr__(name: str):
    """The API is lent lazily (PEP 562): `import fsl` and `fsl --help` load no torch."""
    if name == "FewShotClassifier":
        from fsl.apps.classifier import FewShotClassifier

        return FewShotClassifier
    raise AttributeError(f"module 'fsl' has no attribute {name!r}")
