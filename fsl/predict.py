"""Batch inference (`fsl predict`): classify a folder of photos, with optional product texts,
among the catalog's classes, using a trained head (or a configured one) and a few catalog
examples per class as support. Unreadable files are reported in the CSV and skipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsl import FslError
from fsl.catalog import Catalog, mask_label_words
from fsl.checkpoint import load_head, read_meta
from fsl.config import config_from_dict, load_config
from fsl.features import DEFAULT_ROOT
from fsl.fusion import store_features
from fsl.io import IMAGE_SUFFIXES, check_writable_target, write_csv
from fsl.pipeline import (
    DEFAULT_EPISODES_DIR,
    base_mean,
    build_head,
    encoder_from_config,
    open_store,
)
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


class CatalogClassifier:
    """A head (trained, or configured) over the catalog's classes, with `shots` catalog examples per
    class as its support set: what `fsl predict` and the demo's checkpoint mode classify with."""

    def __init__(self, catalog: Catalog, checkpoint: str | None, config_path: str | None, shots: int = 5,
                 store_root: str | os.PathLike = DEFAULT_ROOT):
        config = (config_from_dict(read_meta(checkpoint)["config"], f"{checkpoint}/head.json") if checkpoint
                  else load_config(config_path))
        self.store = open_store(catalog, config.encoder, store_root)
        self.head = build_head(config, self.store)
        if checkpoint:
            load_head(checkpoint, self.head, self.store.encoder_id)
        self.head.eval()
        self.encoder = encoder_from_config(config.encoder)
        self.name = Path(checkpoint).parent.name if checkpoint else config.name
        self.classes, rows = support_rows(catalog.labels(config.label_column), shots)
        features = store_features(self.store, config.text_variant)
        if self.head.needs_base_mean:
            self.head.base_mean.copy_(base_mean(config, catalog, features, DEFAULT_EPISODES_DIR))
        self.support = torch.from_numpy(np.asarray(features[rows], dtype=np.float32)).unsqueeze(0)
        self.support_labels = torch.arange(len(self.classes)).repeat_interleave(shots).unsqueeze(0)
        masked = config.text_variant.startswith("masked-")  # mask query texts as the support texts were
        self.mask = catalog.label_mask(config.text_variant.split("-", 1)[1]) if masked else None

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
                   shots: int = 5, store_root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    folder = Path(images)
    if not folder.is_dir():
        raise FslError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FslError(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    check_writable_target(Path(out))  # before any work: refuse a device, FIFO or link as output
    text_of = read_texts(texts)
    classifier = CatalogClassifier(catalog, checkpoint, config_path, shots, store_root)

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
    return write_csv(pd.DataFrame(records).reindex(columns=columns), out)
