"""Batch inference (`fsl predict`): classify a folder of photos, with optional product texts, with
any head (trained or configured), among the catalog's classes (a few catalog examples per class as
support) or among your own categories (a support folder: one sub-folder of example photos per
category). Unreadable files are reported in the CSV and skipped; a contact sheet shows the answers."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsl import FslError
from fsl.catalog import Catalog, label_word_pattern, mask_label_words
from fsl.checkpoint import read_meta
from fsl.config import ExperimentConfig, config_from_dict, load_config
from fsl.features import DEFAULT_ROOT
from fsl.io import IMAGE_SUFFIXES, atomic_path, check_writable_target, write_csv
from fsl.pipeline import encoder_from_config, experiment_head
from fsl.teach import embed_image, embed_text, open_image


def read_texts(path: str | os.PathLike | None) -> dict[str, str]:
    """--texts: a CSV with columns file,text; a malformed one is an error naming it, never a traceback."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise FslError(f"--texts {path} is not a file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FslError(f"--texts {path} is not a readable CSV ({str(error).strip().splitlines()[-1]}); "
                       "expected the columns file,text") from None
    if not {"file", "text"} <= set(table.columns):
        raise FslError(f"--texts {path} needs the columns file,text (found {list(table.columns)})")
    return dict(zip(table["file"], table["text"]))


def support_rows(labels: pd.Series, shots: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """`shots` catalog rows per class with enough examples: (classes, rows [N*K] class-major)."""
    rng = np.random.default_rng(seed)
    counts = labels.value_counts()
    classes = sorted(counts[counts >= shots].index)
    if len(classes) < 2:
        raise FslError(f"fewer than two classes have {shots} catalog examples; lower --shots")
    rows = [rng.choice(np.flatnonzero(labels.to_numpy() == c), shots, replace=False) for c in classes]
    return classes, np.concatenate(rows)


# With no --checkpoint or --config: the README's best image-only head, or with texts its fused,
# label-masked sibling (both chosen on validation classes).
SUPPORT_HEADS = {
    "image": ExperimentConfig(name="linear-probe-image", method="linear_probe",
                              method_options={"init": "prototypes", "C": 10}, fusion="image"),
    "fused": ExperimentConfig(name="linear-probe-fused-masked", method="linear_probe",
                              method_options={"init": "prototypes", "C": 10}, fusion="concat",
                              fusion_options={"image_weight": 0.7}, text_variant="masked-articleType"),
}


@dataclass
class SupportFolder:
    """A support set on disk: one sub-folder per category holding its example photos, and optionally
    `texts.csv` (columns file,text; file relative to the folder, e.g. Sneakers/a.jpg)."""

    root: Path
    classes: list[str]
    photos: list[Path]
    labels: list[int]
    texts: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # the same bytes in two categories

    def text_of(self, photo: Path) -> str:
        return self.texts.get(photo.relative_to(self.root).as_posix(), "")


def read_support_folder(folder: str | os.PathLike) -> SupportFolder:
    """Read and check a support folder; a bad one is an error naming the folder."""
    root = Path(folder)
    if not root.is_dir():
        raise FslError(f"--support {root} is not a folder (expected one sub-folder of example photos per category)")
    categories = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(categories) < 2:
        raise FslError(f"--support {root} has {len(categories)} category folder(s); a choice needs at least two "
                       f"(one sub-folder of example photos per category)")
    support = SupportFolder(root, [], [], [], read_texts(root / "texts.csv") if (root / "texts.csv").is_file() else {})
    seen: dict[str, Path] = {}
    for category in categories:
        usable = []
        for path in sorted(p for p in category.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                support.skipped.append((path.relative_to(root).as_posix(), f"not a photo ({path.suffix or 'no suffix'})"))
                continue
            try:
                open_image(path)
            except FslError as error:
                support.skipped.append((path.relative_to(root).as_posix(), str(error)))
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen and seen[digest].parent != category:
                support.duplicates.append((seen[digest].relative_to(root).as_posix(), path.relative_to(root).as_posix()))
            seen.setdefault(digest, path)
            usable.append(path)
        if not usable:
            raise FslError(f"category folder {category} has no usable photo ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                           "add examples or remove the folder")
        support.classes.append(category.name)
        support.photos += usable
        support.labels += [len(support.classes) - 1] * len(usable)
    return support


class CatalogClassifier:
    """A head (trained, or configured) with a support set: `shots` catalog examples per class of the
    catalog, or the examples of a support folder. What `fsl predict` and the demo's checkpoint mode
    classify with."""

    def __init__(self, catalog: Catalog, checkpoint: str | None, config_path: str | None, shots: int = 5,
                 store_root: str | os.PathLike = DEFAULT_ROOT, support: SupportFolder | None = None):
        if checkpoint:
            config = config_from_dict(read_meta(checkpoint)["config"], f"{checkpoint}/head.json")
        elif config_path:
            config = load_config(config_path)
        else:
            config = SUPPORT_HEADS["fused" if support is not None and support.texts else "image"]
        # a config with a train: section gets its trained checkpoint, never a silently untrained head
        self.store, features, self.head = experiment_head(config, catalog, store_root, checkpoint=checkpoint)
        self.head.eval()
        self.encoder = encoder_from_config(config.encoder)
        self.name = Path(checkpoint).parent.name if checkpoint else config.name
        masked = config.text_variant.startswith("masked-")  # mask query texts as the support texts were
        if support is None:
            self.classes, rows = support_rows(catalog.labels(config.label_column), shots)
            self.support = torch.from_numpy(np.asarray(features[rows], dtype=np.float32)).unsqueeze(0)
            self.support_labels = torch.arange(len(self.classes)).repeat_interleave(shots).unsqueeze(0)
            self.mask = catalog.label_mask(config.text_variant.split("-", 1)[1]) if masked else None
        else:  # your own categories: their names are the label words to mask
            self.classes = support.classes
            self.mask = label_word_pattern(support.classes) if masked else None
            rows = [self.features(embed_image(self.encoder, open_image(p)), support.text_of(p)) for p in support.photos]
            self.support = torch.from_numpy(np.stack(rows)).unsqueeze(0)
            self.support_labels = torch.as_tensor(support.labels).unsqueeze(0)

    def features(self, image: np.ndarray, text: str) -> np.ndarray:
        """One query's [image | text] features; a missing text leaves the text part at zero."""
        text = mask_label_words(text, self.mask) if self.mask and text else text
        text_feature = (embed_text(self.encoder, text) if text
                        else np.zeros(self.store.manifest["text_dim"], dtype=np.float32))
        return np.concatenate([image, text_feature])

    @torch.no_grad()
    def probabilities(self, queries: np.ndarray) -> torch.Tensor:
        """[Q, image_dim + text_dim] -> [Q, classes]."""
        logits = self.head(self.support, self.support_labels, torch.from_numpy(queries).unsqueeze(0),
                           len(self.classes))[0]
        return torch.softmax(logits, -1)


def predict_folder(catalog: Catalog, checkpoint: str | None, config_path: str | None, images: str | os.PathLike,
                   texts: str | None = None, out: str | os.PathLike = "results/predictions.csv", top_k: int = 3,
                   shots: int = 5, store_root: str | os.PathLike = DEFAULT_ROOT,
                   support_folder: str | os.PathLike | None = None) -> Path:
    """Classify every photo of `images`; writes the CSV (top-k labels and confidences per photo, an
    `error` cell for unreadable ones) and a contact sheet beside it (same name, .png)."""
    folder = Path(images)
    if not folder.is_dir():
        raise FslError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FslError(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    check_writable_target(Path(out))  # before any work: refuse a device, FIFO or link as output
    check_writable_target(Path(out).with_suffix(".png"))
    text_of = read_texts(texts)
    support = read_support_folder(support_folder) if support_folder is not None else None
    if support is not None:
        for name, why in support.skipped:
            print(f"fsl predict: skipped support file {name}: {why}", file=sys.stderr)
        for first, second in support.duplicates:
            print(f"fsl predict: the same photo is in two categories: {first} and {second}", file=sys.stderr)
    classifier = CatalogClassifier(catalog, checkpoint, config_path, shots, store_root, support)
    if support is not None:
        print(f"{len(support.classes)} categories from {support.root} ({len(support.photos)} examples), "
              f"head {classifier.name}")

    records, queries = [], []
    for path in files:
        try:
            image = embed_image(classifier.encoder, open_image(path))
        except FslError as error:
            records.append({"file": path.name, "error": str(error)})
            continue
        queries.append(classifier.features(image, text_of.get(path.name, "")))
        records.append({"file": path.name, "error": ""})
    if queries:
        top = classifier.probabilities(np.stack(queries)).topk(min(top_k, len(classifier.classes)), dim=-1)
        good = iter(range(len(queries)))
        for record in records:
            if record["error"]:
                continue
            i = next(good)
            for rank, (value, index) in enumerate(zip(top.values[i], top.indices[i]), 1):
                record[f"label_{rank}"] = classifier.classes[int(index)]
                record[f"confidence_{rank}"] = round(float(value), 4)
    columns = ["file"] + [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("label", "confidence")] + ["error"]
    contact_sheet(records, folder, Path(out).with_suffix(".png"))
    return write_csv(pd.DataFrame(records).reindex(columns=columns), out)


def contact_sheet(records: list[dict], folder: Path, path: Path, limit: int = 60) -> Path:
    """Each photo (the first `limit`) with its answer and confidence, or why it could not be read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = records[:limit]
    columns = min(6, len(shown))
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, record in zip(axes.ravel(), shown):
        if record["error"]:
            ax.set_title(f"{record['file'][:24]}\nunreadable", fontsize=7, color="tab:red")
            continue
        with Image.open(folder / record["file"]) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"{record['label_1']} ({record['confidence_1']:.0%})\n{record['file'][:24]}", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
