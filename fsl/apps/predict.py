"""Batch inference (`fsl predict`): classify a folder of photos, with optional product texts, with
any head (trained or configured), among the catalog's classes (a few catalog examples per class as
support) or among your own categories (a support folder: one sub-folder of example photos per
category). Unreadable files are reported in the CSV and skipped; a contact sheet shows the answers."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from fsl.apps.classifier import FewShotClassifier
from fsl.apps.index import open_index
from fsl.apps.support import IMAGE_WEIGHT, SupportFolder, read_support_folder, read_texts
from fsl.config import UNKNOWN, EncoderConfig, ExperimentConfig, config_from_dict, load_config
from fsl.data.catalog import Catalog, label_word_pattern, resolve_data_dir
from fsl.data.prepared import load_catalog
from fsl.encoders.factory import encoder_from_config
from fsl.episodes.siblings import parents_of
from fsl.episodes.splits import ClassSplit
from fsl.errors import FslError
from fsl.files import IMAGE_SUFFIXES, atomic_path, check_writable_target, write_csv
from fsl.inference.calibration import Calibration, config_key, find_calibration
from fsl.inference.checkpoints import read_meta
from fsl.inference.classifier import Answer, HeadInputs, Hierarchy, SupportSetClassifier, answer_record
from fsl.inference.heads import DEFAULT_HEAD, FUSED_DEFAULT_HEAD, NAMED_HEADS, experiment_head
from fsl.inference.negatives import KnownNegatives, find_negatives
from fsl.inference.photos import embed_photos, open_image
from fsl.paths import PREDICTIONS_FILE, Workspace, checkpoint_dir, store_path
from fsl.store.content import ContentCache
from fsl.store.features import FeatureStore
from fsl.store.manifest import is_complete


def support_rows(
    labels: pd.Series, shots: int, seed: int = 0, only: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """`shots` catalog rows per class with enough examples (of `only`, if given): (classes, rows [N*K])."""
    rng = np.random.default_rng(seed)
    counts = labels.value_counts()
    classes = sorted(counts[counts >= shots].index)
    if only is not None:
        short = [c for c in only if c in counts.index and counts[c] < shots]
        if short:
            raise FslError(
                f"classes: {', '.join(short)} have fewer than {shots} catalog examples; ask for fewer shots", "classes"
            )
        classes = sorted(set(only))
    if len(classes) < 2:
        raise FslError(f"fewer than two classes have {shots} catalog examples; lower --shots")
    rows = [rng.choice(np.flatnonzero(labels.to_numpy() == c), shots, replace=False) for c in classes]
    return classes, np.concatenate(rows)


def choose_config(
    checkpoint: str | None, config_path: str | None, support: SupportFolder | None, texts: str
) -> tuple[ExperimentConfig, str | None]:
    """The config to classify with, and a note when it is not the one asked for. `texts` says which
    texts there are: "all" (every query, and every support photo of a folder, has one), or why not.

    A fused head without texts would see a zero text half and answer worse with no sign of it: an
    untrained one falls back to its image part (and says so), a trained one is refused."""
    if checkpoint:
        config = config_from_dict(read_meta(checkpoint)["config"], f"{checkpoint}/head.json")
    elif config_path:
        config = load_config(config_path)
    else:
        return NAMED_HEADS[FUSED_DEFAULT_HEAD if texts == "all" else DEFAULT_HEAD], None
    if config.fusion == "image" or texts == "all":
        return config, None
    if checkpoint or config.train is not None:
        raise FslError(
            f"{config.name} was trained on image and text features, but {texts}: its answers would "
            "come from a zero text half. Give a text for every photo, or use an image-only head "
            "(e.g. experiments/protonet-meta-image.yaml)"
        )
    image_part = dataclasses.replace(config, name=f"{config.name}--image-part", fusion="image", fusion_options={})
    return image_part, (
        f"{config.name} fuses image and text, but {texts}: classifying with its image part only (fusion: image)"
    )


@dataclass
class PhotoFolder:
    """--images as read once: the folder, its photos, a CSV row (file, error) for every other file
    in it, and each photo's product text from --texts (by file name)."""

    folder: Path
    files: list[Path]
    others: list[dict]
    text_of: dict[str, str]


def read_photo_folder(images: str | os.PathLike, texts: str | os.PathLike | None = None) -> PhotoFolder:
    """--images and --texts, read once; an error when the folder holds no photo at all."""
    return PhotoFolder(*photo_files(images), read_texts(texts))


def text_coverage(photos: PhotoFolder, support: SupportFolder | None, given: bool) -> str:
    """ "all" when every query (and support photo) has a text, else why not, in words."""
    if not given:
        return "no --texts were given"
    missing = sum(not photos.text_of.get(path.name) for path in photos.files)
    if missing:
        return f"{missing} of {len(photos.files)} photos have no text in --texts"
    if support is not None and support.photos_without_text:
        return f"{support.photos_without_text} support photos have no text in {support.root / 'texts.csv'}"
    return "all"


class CatalogClassifier:
    """A head (trained, or configured) with a support set: `shots` catalog examples per class of the
    catalog (or of `classes`), or the examples of a support folder. What `fsl predict` and the demo's
    checkpoint mode classify with, through the support-set core (fsl/inference/classifier.py).
    Confidences are calibrated where `fsl calibrate` fitted this head; a support folder's categories
    meet the known negatives made for the encoder, as with `fsl predict --support`."""

    def __init__(
        self,
        catalog: Catalog,
        checkpoint: str | None,
        config_path: str | None,
        shots: int = 5,
        workspace: Workspace = Workspace(),
        support: SupportFolder | None = None,
        texts: str = "all",
        classes: list[str] | None = None,
        calibration_dir: str | os.PathLike | None = None,
        cache_root: str | os.PathLike | None = None,
        catalog_negatives: bool = True,
    ):
        config, self.note = choose_config(checkpoint, config_path, support, texts)
        # a config with a train: section gets its trained checkpoint, never a silently untrained head
        self.store, features, head = experiment_head(config, catalog, workspace, checkpoint=checkpoint)
        self.config = config
        self.encoder = encoder_from_config(config.encoder)
        self.cache = ContentCache(self.encoder, cache_root)
        self.name = Path(checkpoint).parent.name if checkpoint else config.name
        trained = checkpoint_dir(config.name, workspace.checkpoints) / "best"
        weights = checkpoint or (trained if config.train is not None else None)
        calibration = find_calibration(config_key(config, self.store.encoder_id, weights), calibration_dir)
        self.fused = config.fusion != "image"
        masked = config.text_variant.startswith("masked-")  # mask query texts as the support texts were
        if support is None:
            labels = catalog.labels(config.label_column)
            unknown = sorted(set(classes or []) - set(labels))
            if unknown:
                raise FslError(
                    f"classes: {', '.join(unknown)}: not {config.label_column} classes of the catalog", "classes"
                )
            names, rows = support_rows(labels, shots, only=classes)
            mask = catalog.label_mask(config.text_variant.split("-", 1)[1]) if masked else None
            hierarchy = Hierarchy.of_catalog(names, parents_of(catalog, config.label_column) or {})
        else:  # your own categories: their names are the label words to mask
            if classes:
                unknown = sorted(set(classes) - set(support.classes))
                if unknown:
                    raise FslError(
                        f"classes: {', '.join(unknown)}: not among the categories of {support.root}", "classes"
                    )
                support = support.restrict(sorted(set(classes)))
            names = support.classes
            mask = label_word_pattern(names) if masked else None
            hierarchy = Hierarchy(tuple(support.parents.get(n) for n in names)) if support.parents else None
        self.inputs = HeadInputs(self.name, self.fused, self.store.manifest["text_dim"], self.cache.texts, mask)
        if support is None:
            support_features = torch.from_numpy(np.asarray(features[rows], dtype=np.float32))
            support_labels = torch.arange(len(names)).repeat_interleave(shots)
        else:
            image = self.embed_photos(support.photos, checked=True)  # read_support_folder opened each
            support_features = self.inputs(image, [support.text_of(p) for p in support.photos])
            support_labels = torch.as_tensor(support.labels)
        # your own categories meet the known negatives as `fsl predict --support` does
        own = support is not None and catalog_negatives
        self.negatives = find_negatives(self.store.encoder_id) if own else None
        known = None
        if self.negatives is not None:  # in the features the head reads: [image | text] for a fused head
            if self.fused:
                prototypes = self.negatives.for_head(True).prototypes
            else:  # (zeros for the text part of a store's features)
                prototypes = self.inputs(self.negatives.image.numpy())
            known = KnownNegatives(self.negatives.names, prototypes)
        self.core = SupportSetClassifier(
            head, names, support_features, support_labels, calibration, negatives=known, hierarchy=hierarchy
        )

    @property
    def classes(self) -> list[str]:
        return self.core.classes

    @property
    def calibration(self) -> Calibration | None:
        return self.core.calibration

    @property
    def answering_calibration(self) -> Calibration | None:
        """The calibration the rule answers with (beside known negatives, its thresholds fitted with them)."""
        return self.core.answering_calibration

    def embed_photos(self, photos: Sequence[str | os.PathLike], checked: bool = False) -> np.ndarray:
        """[n, image_dim] of photo files, through the content cache."""
        return embed_photos(self.cache, self.encoder, photos, checked)

    def answer_features(self, image_features: np.ndarray, texts: Sequence[str] | None = None) -> list[Answer]:
        """Answers for photos already embedded ([Q, image_dim]), with their texts for a fused head."""
        return self.core.answer(self.inputs(image_features, texts))

    def describe(self, paths: bool = True) -> str:
        said = (
            f"head {self.name}; {self.answering_calibration.describe(paths)}"
            if self.calibration
            else f'head {self.name}, uncalibrated (raw softmax, no "{UNKNOWN}" threshold): `fsl calibrate` an '
            f"experiment config with this head and fusion ({self.config.method}, {self.config.fusion}) to fit it"
        )
        return f"{said}; {self.negatives.describe()}" if self.negatives else said


def split_classes_of(
    catalog: Catalog, split_name: str, workspace: Workspace = Workspace(), column: str = "articleType"
) -> list[str]:
    """--classes split:novel -> the classes of that split of the catalog's seed-0 class split."""
    try:
        return ClassSplit.load(catalog, column, 0, workspace.episodes_of(0)).classes(split_name)
    except FslError as error:
        raise FslError(f"classes split:{split_name}: {error}", "classes") from None


def parse_classes(text: str | None, catalog: Catalog, workspace: Workspace = Workspace()) -> list[str] | None:
    """--classes "Watches,Handbags" or "split:novel"."""
    if text is None:
        return None
    if text.startswith("split:"):
        return split_classes_of(catalog, text.removeprefix("split:"), workspace)
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if len(set(classes)) < 2:
        raise FslError(f"classes {text!r}: name at least two classes, comma-separated, or split:novel", "classes")
    return classes


def photo_files(images: str | os.PathLike) -> tuple[Path, list[Path], list[dict]]:
    """--images: the folder, its photos, and a CSV row (file, error) for every other file in it (a
    .heic, a broken link), so that each file shows in the CSV and the count; an error when the
    folder holds no photo at all."""
    folder = Path(images)
    if not folder.is_dir():
        raise FslError(f"images {folder} is not a folder", "images")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir())
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FslError(f"no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    others = [
        {
            "file": p.name,
            "error": f"not a photo fsl reads ({p.suffix or 'no suffix'})"
            if p.is_file()
            else "a broken or looping link, or not a file",
        }
        for p in entries
        if p not in files
    ]
    return folder, files, others


def check_out(out: str | os.PathLike) -> None:
    """--out: a .csv path that can be written (checked before any work), with a contact sheet beside it."""
    if Path(out).suffix.lower() != ".csv":
        raise FslError(f"out {out}: expected a .csv file (the contact sheet goes beside it, as .png)", "out")
    check_writable_target(Path(out))  # refuse a device, FIFO or link as output
    check_writable_target(Path(out).with_suffix(".png"))


def report_support(support: SupportFolder) -> None:
    """What of a support folder is not used, and why (stderr)."""
    for name, why in support.skipped:
        print(f"fsl predict: skipped support file {name}: {why}", file=sys.stderr)
    for first, second in support.duplicates:
        print(f"fsl predict: the same photo is in two categories: {first} and {second}", file=sys.stderr)
    unpaired = sum(len(texts) for texts in support.category_texts.values())
    if unpaired:
        print(
            f"fsl predict: {unpaired} text example(s) without a photo in {support.root / 'texts.csv'} are not "
            "used: the heads need a photo per example (the demo uses them)",
            file=sys.stderr,
        )


def write_predictions(records: list[dict], folder: Path, out: str | os.PathLike, top_k: int, classifier) -> Path:
    """The CSV (fixed columns; `level`: whether the answer is a category, a parent of categories or
    "unknown"; `score`: the calibration's known-ness score, the answer "unknown" below its threshold)
    and its contact sheet, which names the classifier that answered (`classifier`:
    a FewShotClassifier or a CatalogClassifier)."""
    columns = (
        ["file", "answer", "level", "candidates", "score", "looks_like"]
        + [f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("label", "confidence")]
        + ["nearest_id", "nearest_label", "error"]
    )
    records = sorted(records, key=lambda record: record["file"])
    contact_sheet(
        records,
        folder,
        Path(out).with_suffix(".png"),
        classifier.answering_calibration,
        classifier.describe(False),
        len(classifier.classes),
    )
    return write_csv(pd.DataFrame(records).reindex(columns=columns), out)


def add_nearest(records: list[dict], image_features: list[np.ndarray], catalog: Catalog, store, column: str) -> None:
    """The catalog product whose photo is closest to each photo, through the store's search index."""
    index = open_index(store, IMAGE_WEIGHT)
    image_dim = store.manifest["image_dim"]
    _, nearest = index.search(np.stack([index.query(q[:image_dim], None) for q in image_features]), 1)
    good = iter(nearest[:, 0])
    products = catalog.products
    for record in records:
        if not record["error"]:
            row = int(next(good))
            record["nearest_id"] = int(products.at[row, "id"])
            record["nearest_label"] = products.at[row, column]


def answer_photos(
    classifier: FewShotClassifier | CatalogClassifier,
    photos: PhotoFolder,
    out: str | os.PathLike = PREDICTIONS_FILE,
    top_k: int = 3,
    catalog_store: tuple[Catalog, FeatureStore] | None = None,
) -> tuple[Path, list[dict]]:
    """Every photo of `photos` answered by `classifier` (its own categories, or a catalog head's
    classes): a CSV row each, with an `error` cell for a file that cannot be read. With
    `catalog_store` (a catalog and its embedded store) each photo also gets its nearest catalog
    product. Returns the CSV written and its records."""
    records, readable = list(photos.others), []
    for path in photos.files:
        try:
            open_image(path)
        except FslError as error:
            records.append({"file": path.name, "error": str(error)})
            continue
        records.append({"file": path.name, "error": ""})
        readable.append(path)
    if readable:
        features = classifier.embed_photos(readable, checked=True)
        answers = iter(classifier.answer_features(features, [photos.text_of.get(p.name, "") for p in readable]))
        for record in records:
            if not record["error"]:
                record.update(answer_record(next(answers), top_k))
        if catalog_store is not None:
            catalog, store = catalog_store
            add_nearest(records, list(features), catalog, store, classifier.config.label_column)
    return write_predictions(records, photos.folder, out, top_k, classifier), records


def catalog_store_if_any(data: str | os.PathLike | None, encoder_id: str, workspace: Workspace):
    """((catalog, its store), "") when a catalog is at hand (--data, $FSL_DATA or the default folder)
    and already embedded with this encoder, else (None, why not): own categories need neither, and
    the catalog is never embedded for a few photos."""
    try:
        resolve_data_dir(data)
    except FslError:
        return None, "no catalog (--data or FSL_DATA)"
    catalog = load_catalog(data)
    path = store_path(workspace.features, encoder_id, catalog.fingerprint)
    if not is_complete(path):
        return None, "the catalog is not embedded with this encoder (`fsl embed`)"
    return (catalog, FeatureStore.open(path, encoder_id, catalog.fingerprint)), ""


def predict_own_categories(
    support_folder: str | os.PathLike,
    images: str | os.PathLike,
    texts: str | None = None,
    out: str | os.PathLike = PREDICTIONS_FILE,
    top_k: int = 3,
    config_path: str | None = None,
    classes: list[str] | None = None,
    calibration_dir: str | os.PathLike | None = None,
    calibrate_false_accept: float | None = None,
    data: str | os.PathLike | None = None,
    workspace: Workspace = Workspace(),
    catalog_negatives: bool = True,
    encoder: EncoderConfig | None = None,
) -> Path:
    """`fsl predict --support`: every photo of `images` among a support folder's categories, with
    the folders alone; with `calibrate_false_accept`, the threshold fitted on the support itself;
    with `catalog_negatives`, the known negatives made for the encoder, where they apply; with
    `encoder`, that encoder instead of the head's (a tower adapted for your own categories).
    Prints the head, encoder and calibration first, then what was answered and how fast."""
    started = time.perf_counter()
    check_out(out)
    support = read_support_folder(support_folder)
    photos = read_photo_folder(images, texts)
    config, note = choose_config(None, config_path, support, text_coverage(photos, support, texts is not None))
    classifier = FewShotClassifier.from_support(
        support,
        config,
        classes,
        encoder=encoder,
        calibration_dir=calibration_dir,
        negatives="auto" if catalog_negatives else None,
    )
    report_support(support)
    if note:
        print(f"fsl predict: {note}", file=sys.stderr)
    if calibrate_false_accept is not None:
        figures = classifier.calibrate_on_support(calibrate_false_accept).validation
        print(
            f"fsl predict: calibrated on the support: AUROC taught vs untaught {figures['auroc']:.3f}; an untaught "
            f"category's photos accepted about {figures['estimated_false_accept']:.0%} of the time (leave one "
            f"category out), taught photos answered {figures['taught_answered']:.0%}",
            file=sys.stderr,
        )
    catalog_store, why_not = catalog_store_if_any(data, classifier.encoder.id, workspace)
    extras = "nearest catalog example on" if catalog_store else f"catalog extras off: {why_not}"
    print(
        f"{classifier.describe()}; {len(classifier.classes)} categories from {support.root} "
        f"({len(classifier.labels)} examples); {extras}"
    )
    written, records = answer_photos(classifier, photos, out, top_k, catalog_store)
    answered = [r for r in records if not r["error"]]
    unknown = sum(r["answer"] == UNKNOWN for r in answered)
    alike = sum(bool(r["looks_like"]) for r in answered)
    coarse = sum(r["level"] == "parent" for r in answered)
    print(
        f"{len(answered)} photos answered in {time.perf_counter() - started:.1f} s "
        f'({classifier.cache.hits} embeddings cached, {classifier.cache.misses} computed); {unknown} "{UNKNOWN}"'
        + (f" ({alike} of them nearer a known negative than any category: the looks_like column)" if alike else "")
        + (f"; {coarse} answered with a parent, not one of its categories (the level column)" if coarse else "")
    )
    return written


def predict_folder(
    catalog: Catalog,
    checkpoint: str | None,
    config_path: str | None,
    images: str | os.PathLike,
    texts: str | None = None,
    out: str | os.PathLike = PREDICTIONS_FILE,
    top_k: int = 3,
    shots: int = 5,
    workspace: Workspace = Workspace(),
    support_folder: str | os.PathLike | None = None,
    classes: str | None = None,
    calibration_dir: str | os.PathLike | None = None,
    catalog_negatives: bool = True,
) -> Path:
    """Classify every photo of `images` with a catalog head (a trained checkpoint, or a config that
    needs the catalog's store); writes the CSV (top-k labels and confidences per photo, the answer
    after the unknown rule, the nearest catalog product, an `error` cell for unreadable ones) and a
    contact sheet beside it."""
    photos = read_photo_folder(images, texts)
    check_out(out)
    only = parse_classes(classes, catalog, workspace)
    support = read_support_folder(support_folder) if support_folder is not None else None
    if support is not None:
        report_support(support)
    classifier = CatalogClassifier(
        catalog,
        checkpoint,
        config_path,
        shots,
        workspace,
        support,
        text_coverage(photos, support, texts is not None),
        only,
        calibration_dir,
        catalog_negatives=catalog_negatives,
    )
    if classifier.note:
        print(f"fsl predict: {classifier.note}", file=sys.stderr)
    source = (
        f"{len(classifier.classes)} categories from {support.root} ({len(support.photos)} examples)"
        if support is not None
        else f"{len(classifier.classes)} catalog classes ({shots} examples each)"
    )
    print(f"{classifier.describe()}; {source}")

    written, records = answer_photos(classifier, photos, out, top_k, (catalog, classifier.store))
    answered = [r for r in records if not r["error"]]
    if classifier.calibration and answered:
        unknown = sum(r["answer"] == UNKNOWN for r in answered)
        rule = classifier.answering_calibration.rule(len(classifier.classes))
        print(f'{unknown} of {len(answered)} photos answered "{UNKNOWN}" ({rule})')
    return written


THUMBNAIL = 160  # pixels, the side of each photo's cell in the contact sheet
CAPTION = 30  # pixels of caption below each photo: the answer, then the file name
CAPTION_COLOURS = {"answer": (0, 0, 0), "unknown": (120, 120, 120), "error": (200, 30, 30)}


def contact_sheet(
    records: list[dict],
    folder: Path,
    path: Path,
    calibration: Calibration | None,
    about: str = "",
    taught: int | None = None,
    limit: int = 60,
    columns: int = 6,
) -> Path:
    """Each photo (the first `limit`) with its answer and confidence (for a parent, its categories; for
    "unknown", the known negative it looks like, else its score beside the threshold), or why it could
    not be read, and under them `about` (which head, encoder and calibration answered): a grid of
    thumbnails drawn with Pillow (matplotlib's layout took longer than classifying)."""
    shown = records[:limit]
    columns = min(columns, len(shown))
    rows = -(-len(shown) // columns)
    footer = textwrap.wrap(about, columns * THUMBNAIL // 6)
    sheet = Image.new("RGB", (columns * THUMBNAIL, rows * (THUMBNAIL + CAPTION) + 14 * len(footer) + 6), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for i, line in enumerate(footer):
        draw.text((4, rows * (THUMBNAIL + CAPTION) + 14 * i), line, fill=CAPTION_COLOURS["unknown"], font=font)
    for i, record in enumerate(shown):
        left, top = (i % columns) * THUMBNAIL, (i // columns) * (THUMBNAIL + CAPTION)
        if record["error"]:
            caption, colour = "unreadable", CAPTION_COLOURS["error"]
        else:
            thumbnail = open_image(folder / record["file"])  # RGB, the way the photo looks
            thumbnail.thumbnail((THUMBNAIL - 8, THUMBNAIL - 8))
            sheet.paste(
                thumbnail, (left + (THUMBNAIL - thumbnail.width) // 2, top + (THUMBNAIL - thumbnail.height) // 2)
            )
            unknown = record["answer"] == UNKNOWN
            if record.get("level") == "parent":
                caption = f"{record['answer']}: {record['candidates'].replace(' or ', '/')}?"
            elif unknown and record.get("looks_like"):
                caption = f"{UNKNOWN}: like {record['looks_like']}"
            elif unknown:
                caption = f"{UNKNOWN} ({calibration.verdict(record['score'], named=False, taught=taught)})"
            else:
                caption = f"{record['answer']} ({record['confidence_1']:.0%})"
            colour = CAPTION_COLOURS["unknown" if unknown else "answer"]
        draw.text((left + 4, top + THUMBNAIL), caption[:28], fill=colour, font=font)
        draw.text((left + 4, top + THUMBNAIL + 14), record["file"][:28], fill=CAPTION_COLOURS["unknown"], font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
