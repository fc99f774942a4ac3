"""Your own categories from a few photos: the one classifier behind `fsl predict --support`, the
demo's Teach and Predict tabs and the Python API.

    from fsl import FewShotClassifier
    clf = FewShotClassifier.from_folder("support")          # one sub-folder of photos per category
    for answer in clf.predict(["query/a.jpg", "query/b.jpg"]):
        print(answer.label, f"{answer.confidence:.0%}")      # a category, or "unknown"
    clf.save("my-classifier"); FewShotClassifier.load("my-classifier")

It needs no catalog: photos and texts are embedded once and cached by content (fsl/store/content.py),
so a second run loads no weights. The head is any experiment config that learns from the support
alone; the default is the calibrated head that answers the most taught photos right at a fixed share of
untaught ones let through, on selection episodes (docs/calibration.md). Confidences and the "unknown"
answer come from a calibration: the one `fsl calibrate` fitted for this head and encoder on base and
validation classes (shipped with the package, or your own under the cache), or one fitted on the
support itself (`calibrate_on_support`: leave one category out). Known negatives (fsl/inference/negatives.py:
the classes of a catalog, the shipped one for the offline encoder) answer a photo nearer one of them than
any taught category "unknown", and say which it looks like."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from fsl.apps.support import SupportFolder, category_folder_name, check_category_name, read_support_folder
from fsl.config import UNKNOWN, EncoderConfig, ExperimentConfig, config_from_dict
from fsl.data.catalog import label_word_pattern
from fsl.encoders.factory import encoder_from_config
from fsl.errors import FslError, shown
from fsl.files import atomic_folder, check_record, read_json, write_csv, write_json
from fsl.inference.calibration import FALSE_ACCEPT, Calibration, calibrate_on_support, config_key, find_calibration
from fsl.inference.classifier import Answer, HeadInputs, Hierarchy, SupportSetClassifier
from fsl.inference.heads import DEFAULT_HEAD, FUSED_DEFAULT_HEAD, NAMED_HEADS, head_config, head_for_features
from fsl.inference.negatives import CatalogNegatives, find_negatives
from fsl.inference.photos import embed_photos
from fsl.store.content import ContentCache, file_digest

MANIFEST = "classifier.json"


class FewShotClassifier:
    """Categories taught by example photos (and, for fused heads, their texts); answers photos."""

    def __init__(
        self,
        head: str | ExperimentConfig = DEFAULT_HEAD,
        encoder: EncoderConfig | None = None,
        calibration: Calibration | None | str = "auto",
        calibration_dir: str | os.PathLike | None = None,
        cache_root: str | os.PathLike | None = None,
        negatives: CatalogNegatives | None | str = "auto",
    ):
        """`calibration`: "auto" finds the one fitted for this head and encoder (your own under the
        cache first, then the shipped ones; only `calibration_dir` when given), None for raw softmax
        and no "unknown" threshold, or a Calibration. `negatives`: "auto" finds the known negatives made
        for this encoder (`fsl negatives` under the cache first, then the shipped ones; measured for the
        image-only and fused heads in docs/calibration.md), None for none, or CatalogNegatives (or the
        path of their .safetensors file)."""
        self.config = head_config(head)
        self.encoder_config = encoder or self.config.encoder
        self.encoder = encoder_from_config(self.encoder_config)  # built on the first photo not in the cache
        self.cache = ContentCache(self.encoder, cache_root)
        self.fused = self.config.fusion != "image"
        self.masked = self.config.text_variant.startswith("masked-")  # category names masked, as in training
        self.support_folder = None  # the SupportFolder it was read from, if any
        self.classes: list[str] = []
        self.parents: dict[str, str] = {}  # category -> its parent category, for those under one
        self.photos: list[str | None] = []  # each example's file (None: given as features or a PIL image)
        self.texts: list[str] = []
        self.labels: list[int] = []
        self._image_features: list[np.ndarray] = []
        self.calibration: Calibration | None = self._calibration(calibration, calibration_dir)
        self.negatives_choice = negatives if isinstance(negatives, str) and negatives == "auto" else None
        self.negatives: CatalogNegatives | None = self._negatives(negatives)
        self.core: SupportSetClassifier | None = None  # what answers (inference/classifier.py), built on demand
        self._fitted_on = -1  # how many examples the core was built for

    def _calibration(self, calibration: object, calibration_dir: str | os.PathLike | None) -> Calibration | None:
        """The `calibration` argument as a Calibration or None, checked now rather than at the first answer."""
        if calibration == "auto":
            return find_calibration(config_key(self.config, self.encoder.id), calibration_dir)
        if calibration is None or isinstance(calibration, Calibration):
            return calibration
        if isinstance(calibration, (str, os.PathLike)) and Path(calibration).suffix == ".json":
            if not Path(calibration).is_file():
                raise FslError(f"calibration {calibration}: no such file")
            return Calibration.load(calibration)
        raise FslError(
            f'calibration {shown(calibration)}: expected "auto" (the one fitted for this head and encoder), '
            'None (no "unknown" threshold), a Calibration, or the path of a calibration .json file'
        )

    def _negatives(self, negatives: object) -> CatalogNegatives | None:
        """The `negatives` argument as CatalogNegatives or None, checked now rather than at the first answer."""
        if isinstance(negatives, str) and negatives == "auto":
            return find_negatives(self.encoder.id)
        if negatives is None or isinstance(negatives, CatalogNegatives):
            found = negatives
        elif isinstance(negatives, (str, os.PathLike)) and Path(negatives).suffix == ".safetensors":
            if not Path(negatives).is_file():
                raise FslError(f"negatives {negatives}: no such file", "negatives")
            found = CatalogNegatives.load(negatives)
        else:
            raise FslError(
                f'negatives {shown(negatives)}: expected "auto" (those made for this encoder), None (no known '
                "negatives), CatalogNegatives, or the path of a known-negatives .safetensors file",
                "negatives",
            )
        if found is not None and found.encoder != self.encoder.id:
            raise FslError(
                f"{found.path or 'the known negatives'} were made with encoder {found.encoder}, not {self.encoder.id}; "
                "make them with `fsl negatives` for this encoder",
                "negatives",
            )
        return found

    # Teaching -----------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        head: str | ExperimentConfig | None = None,
        classes: Sequence[str] | None = None,
        **options,
    ) -> FewShotClassifier:
        """Categories from a support folder (one sub-folder of photos per category, optional texts.csv;
        only `classes`, if given). Without `head`: DEFAULT_HEAD, or FUSED_DEFAULT_HEAD when every photo
        has a text. `options`: those of the constructor."""
        return cls.from_support(read_support_folder(folder), head, classes, **options)

    @classmethod
    def from_support(
        cls,
        support: SupportFolder,
        head: str | ExperimentConfig | None = None,
        classes: Sequence[str] | None = None,
        **options,
    ) -> FewShotClassifier:
        """Categories from a support folder already read (`from_folder`)."""
        if classes:
            unknown = sorted(set(classes) - set(support.classes))
            if unknown:
                raise FslError(f"classes: {', '.join(unknown)}: not among the categories of {support.root}", "classes")
            support = support.restrict(sorted(set(classes)))
        if head is None:
            head = FUSED_DEFAULT_HEAD if support.photos_without_text == 0 and support.texts else DEFAULT_HEAD
        classifier = cls(head, **options)
        classifier.support_folder = support
        for index, name in enumerate(support.classes):
            photos = [p for p, label in zip(support.photos, support.labels) if label == index]
            texts = [support.text_of(p) for p in photos]
            classifier.add_examples(name, photos, texts, checked=True, parent=support.parents.get(name))
        return classifier

    def add_examples(
        self,
        category: str,
        photos: Sequence[str | os.PathLike | Image.Image],
        texts: Sequence[str] | None = None,
        checked: bool = False,
        parent: str | None = None,
    ) -> FewShotClassifier:
        """Teach `category` (new or not) more example photos, with their product texts for a fused head
        (`checked`: the files were opened already, as a support folder's are when it is read), under
        `parent` if given (a category's parent, like a nested support folder's: `add_features`)."""
        check_category_name(category)
        if isinstance(photos, (str, os.PathLike, Image.Image)):
            raise FslError(f"{category}: give a list of photos, not a single {type(photos).__name__}")
        texts = list(texts) if texts is not None else [""] * len(photos)
        if len(texts) != len(photos):
            raise FslError(f"{category}: {len(photos)} photos but {len(texts)} texts; give one text per photo")
        if not photos:
            raise FslError(f"{category}: no example photos given")
        return self.add_features(category, self.embed_photos(photos, checked), texts, photos, parent)

    def add_features(
        self,
        category: str,
        image_features: np.ndarray,
        texts: Sequence[str] | None = None,
        photos: Sequence[str | os.PathLike | Image.Image | None] | None = None,
        parent: str | None = None,
    ) -> FewShotClassifier:
        """Teach examples already embedded by this classifier's encoder ([n, image_dim]); the demo's
        examples come this way. `parent`: the category's parent category ("Footwear" for "Heels"), which
        an answer names where the rule accepts it and not one of its categories; a category keeps one."""
        check_category_name(category)
        if parent is not None:
            check_category_name(parent)
            if self.parents.get(category, parent) != parent:
                raise FslError(f"{category} is under {self.parents[category]}, not {parent}: a category has one parent")
        image_features = np.asarray(image_features, dtype=np.float32)
        width = self.image_dim if self._image_features else image_features.shape[-1] if image_features.ndim else 0
        if image_features.ndim != 2 or len(image_features) == 0 or image_features.shape[1] != width:
            raise FslError(
                f"{category}: expected features of shape [examples, {width or 'image_dim'}], got {image_features.shape}"
            )
        if not np.isfinite(image_features).all():
            raise FslError(f"{category}: the features hold NaN or infinite values")
        if category not in self.classes:
            self.classes.append(category)
        if parent is not None:
            self.parents[category] = parent
        label = self.classes.index(category)
        n = len(image_features)
        self._image_features += list(image_features)
        self.texts += list(texts) if texts is not None else [""] * n
        self.photos += [str(p) if isinstance(p, (str, os.PathLike)) else None for p in (photos or [None] * n)]
        self.labels += [label] * n
        return self

    def embed_photos(self, photos: Sequence[str | os.PathLike | Image.Image], checked: bool = False) -> np.ndarray:
        """[n, image_dim]: files through the content cache (each checked readable first, unless the
        caller did: `checked`), PIL images directly."""
        return embed_photos(self.cache, self.encoder, photos, checked)

    # Answering ----------------------------------------------------------------------------------

    def features(self, image_features: np.ndarray, texts: Sequence[str] | None = None) -> torch.Tensor:
        """[n, image_dim (+ text_dim)] as the head reads them: an image-only head gets no text part;
        a fused head gets the texts with the category names masked (as in training: masked-articleType)."""
        mask = label_word_pattern(self.classes) if self.masked else None
        return HeadInputs(self.config.name, self.fused, 0, self.cache.texts, mask)(image_features, texts)

    def _ready(self) -> SupportSetClassifier:
        """The core that answers: built again when examples were added since, with the current calibration."""
        if len(self.classes) < 2:
            raise FslError(f"{len(self.classes)} categories taught; a choice needs at least two")
        empty = [c for i, c in enumerate(self.classes) if i not in self.labels]
        if empty:
            raise FslError(f"no examples for {', '.join(empty)}")
        if self._fitted_on != len(self.labels):
            support = self.features(np.stack(self._image_features), self.texts)
            text_dim = support.shape[1] - self.image_dim
            head = head_for_features(self.config, self.image_dim, text_dim, self.encoder.id)
            if head.needs_base_classes or head.needs_class_text:
                raise FslError(
                    f"{self.config.name} learns from the catalog's base classes or class names; a support folder "
                    f"alone cannot teach it (choose one of {', '.join(NAMED_HEADS)})"
                )
            negatives = None
            if self.negatives is not None:
                negatives = self.negatives.for_head(self.fused)
                if negatives.prototypes.shape[1] != support.shape[1]:
                    raise FslError(
                        f"{self.negatives.path or 'the known negatives'} hold {negatives.prototypes.shape[1]} "
                        f"features per class, the head reads {support.shape[1]}; make them again with `fsl negatives`",
                        "negatives",
                    )
            self.core = SupportSetClassifier(
                head, self.classes, support, torch.as_tensor(self.labels), None, negatives=negatives
            )
            self._fitted_on = len(self.labels)
        self.core.calibration = self.calibration
        self.core.use_hierarchy(self.hierarchy())
        return self.core

    def hierarchy(self) -> Hierarchy | None:
        """The taught categories under their parents (None when no category has one)."""
        return Hierarchy(tuple(self.parents.get(c) for c in self.classes)) if self.parents else None

    @property
    def complete(self) -> bool:
        """Whether every category taught has examples, and there are two at least: the classifier can answer."""
        return len(self.classes) >= 2 and len(set(self.labels)) == len(self.classes)

    @property
    def image_dim(self) -> int:
        return len(self._image_features[0])

    def logits(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, D] query features -> [Q, categories]."""
        return self._ready().logits(queries)

    def answer_features(self, image_features: np.ndarray, texts: Sequence[str] | None = None) -> list[Answer]:
        """Answers for queries already embedded ([Q, image_dim]), with their texts for a fused head."""
        return self._ready().answer(self.features(image_features, texts))

    def predict(
        self, photos: Sequence[str | os.PathLike | Image.Image], texts: Sequence[str] | None = None
    ) -> list[Answer]:
        """One Answer per photo (a file path or a PIL image); `texts`, one per photo, for a fused head."""
        if not photos:
            return []
        self._ready()
        return self.answer_features(self.embed_photos(photos), texts)

    @property
    def answering_calibration(self) -> Calibration | None:
        """The calibration the rule answers with: beside known negatives that answer, its thresholds fitted
        with them (`fsl calibrate`)."""
        return self._ready().answering_calibration

    def describe(self, paths: bool = True) -> str:
        """Which head, encoder and calibration answer, in words (the first line `fsl predict` prints;
        `paths`: name the calibration's file, as a terminal may and a web page should not)."""
        if self.calibration is not None:
            said = (self.answering_calibration if self.complete else self.calibration).describe(paths)
        else:
            said = (
                f'uncalibrated (raw softmax, no "{UNKNOWN}" threshold): no calibration was fitted for '
                f"{self.config.name} with encoder {self.encoder.id}; `fsl calibrate` one, or use --calibrate-on-support"
            )
        negatives, parents = self.describe_negatives(), self.describe_parents()
        return f"head {self.config.name}, encoder {self.encoder.id}; {said}; {negatives}{parents}"

    def describe_parents(self) -> str:
        """The parents that can be answered, in words ("" when none: a flat support, or no calibration
        to refuse a category with)."""
        hierarchy = self.hierarchy()
        groups = hierarchy.groups if hierarchy is not None else []
        named = [f"{parent} ({', '.join(self.classes[m] for m in members)})"
                 for parent, members in groups if parent is not None and len(members) >= 2]  # fmt: skip
        if not named or self.calibration is None:
            return ""
        return f"; a parent answered where the rule refuses its categories but not it: {'; '.join(named)}"

    def describe_negatives(self) -> str:
        """The known negatives in words, with the ones left out as taught categories once the support
        is complete."""
        if self.negatives is None:
            return "known negatives off"
        said = self.negatives.describe()
        rule = self._ready().negative_rule if self.complete else None
        if rule is not None and rule.left_out:
            said += f"; left out as taught categories: {', '.join(rule.left_out)}"
        return said

    # Calibrating on the support -----------------------------------------------------------------

    def calibrate_on_support(self, false_accept: float = FALSE_ACCEPT, score: str = "auto") -> Calibration:
        """Fit the temperature, the "none of these" score and its threshold on the support itself
        (leave one category out; fsl/inference/calibration.py), use them from now on and return them."""
        self._ready()
        validation = find_calibration(config_key(self.config, self.encoder.id))
        folder = getattr(self.support_folder, "root", None)
        where = f"the support folder {folder}" if folder else "the taught examples"
        self.calibration = calibrate_on_support(
            self.config,
            self.core.head,
            self.core.support,
            self.core.labels,
            config_key(self.config, self.encoder.id),
            self.encoder.id,
            where,
            false_accept,
            score,
            validation.temperature if validation else 1.0,
        )
        self.calibration.support_digest = self.support_digest()
        return self.calibration

    def support_digest(self) -> str:
        """What a calibration fitted on the support was fitted on: each example's category, content (its
        file's bytes, else its features) and text, in any order. A saved classifier whose photos
        changed since no longer matches its calibration."""
        rows = sorted(
            f"{self.classes[label]}\t{file_digest(photo) if photo else hashlib.sha256(features.tobytes()).hexdigest()}"
            f"\t{text}"
            for photo, label, text, features in zip(self.photos, self.labels, self.texts, self._image_features)
        )
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]

    # Saving -------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """A support folder (the example photos, copied, a category under a parent in the parent's
        folder; texts.csv) with classifier.json (head, encoder, calibration), replacing `folder` whole
        once complete. `folder` must be new, empty or a classifier saved before (it holds
        classifier.json): a folder of other files is never replaced. Examples given as features or PIL
        images have no file to save: an error names them."""
        unsaved = sum(p is None for p in self.photos)
        if unsaved:
            raise FslError(f"{unsaved} examples were given without a photo file; only photo files can be saved")
        if len(self.classes) < 2:
            raise FslError(f"{len(self.classes)} categories taught; a classifier needs at least two to be saved")
        with atomic_folder(folder, MANIFEST) as staging:
            rows = []
            for i, (photo, label, text) in enumerate(zip(self.photos, self.labels, self.texts)):
                name = f"{i:04d}-{Path(photo).name}"
                category = category_folder_name(self.classes[label])
                parent = self.parents.get(self.classes[label])
                if parent is not None:
                    category = f"{category_folder_name(parent)}/{category}"
                (staging / category).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, staging / category / name)
                if text:
                    rows.append({"file": f"{category}/{name}", "text": text})
            if rows:
                write_csv(pd.DataFrame(rows, columns=["file", "text"]), staging / "texts.csv")
            calibration = None
            if self.calibration is not None:
                calibration = {k: v for k, v in dataclasses.asdict(self.calibration).items() if k != "path"}
            record = {
                "head": dataclasses.asdict(self.config),
                "encoder": dataclasses.asdict(self.encoder_config),
                "calibration": calibration,
                "negatives": self.saved_negatives(),
            }
            write_json(staging / MANIFEST, record)
        return Path(folder)

    def saved_negatives(self) -> str | None:
        """What classifier.json records of the known negatives: "auto", the file they came from, or None."""
        if self.negatives is None or self.negatives_choice == "auto":
            return self.negatives_choice
        if self.negatives.path is None:
            raise FslError(
                "known negatives given without a file cannot be saved; save them first (CatalogNegatives.save)"
            )
        return str(Path(self.negatives.path).resolve())

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        cache_root: str | os.PathLike | None = None,
        calibration: Calibration | None | str = "saved",
    ) -> FewShotClassifier:
        """A classifier saved by `save`: the same head, encoder, calibration and examples. `calibration`:
        "saved" (its own, checked: fitted for this head and encoder and, when fitted on the support, on
        these very examples), or anything the constructor takes in its place."""
        manifest_path = Path(folder) / MANIFEST
        manifest = read_json(manifest_path, "classifier manifest")
        fix = "save the classifier again"
        check_record(manifest, {"head": (dict,), "encoder": (dict,), "calibration": (dict, type(None))},
                     manifest_path, "saved classifier", fix)  # fmt: skip
        config = config_from_dict(manifest["head"], str(manifest_path))
        try:
            encoder = EncoderConfig(**manifest["encoder"])
        except TypeError as error:
            raise FslError(f"{manifest_path} is damaged ({error}); {fix}") from None
        record = manifest["calibration"]
        saved = calibration == "saved"
        alternative = 'or load it with calibration="auto" (the shipped one) or None'
        if saved and record is not None:
            calibration = Calibration.from_record(record, manifest_path, f"{fix}, {alternative}")
        elif saved:
            calibration = None
        negatives = manifest.get("negatives", "auto")  # (absent: saved before known negatives existed)
        if not (negatives is None or isinstance(negatives, str)):
            raise FslError(f"{manifest_path} is damaged (negatives {shown(negatives)}); {fix}")
        classifier = cls.from_folder(
            folder, config, encoder=encoder, calibration=calibration, cache_root=cache_root, negatives=negatives
        )
        if saved and classifier.calibration is not None:
            classifier.check_saved_calibration(manifest_path, alternative)
        return classifier

    def check_saved_calibration(self, path: Path, alternative: str) -> None:
        """A saved calibration answers only for what it was fitted for: this head and encoder and, when
        fitted on the support, the same examples (photos replaced since would keep a stale threshold)."""
        calibration = self.calibration
        if calibration.key != config_key(self.config, self.encoder.id):
            raise FslError(
                f"{path}: the calibration was fitted for encoder {calibration.encoder} and head {calibration.config}, "
                f"not for this classifier ({self.encoder.id}, {self.config.name}); recalibrate, {alternative}"
            )
        if calibration.support_digest and calibration.support_digest != self.support_digest():
            raise FslError(
                f"{path}: the calibration was fitted on the support's photos as they were, and they have changed "
                f"since (added, removed or edited); recalibrate (calibrate_on_support), {alternative}"
            )
