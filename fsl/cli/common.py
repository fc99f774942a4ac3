"""Argument types and option groups the command families share, checked before any work starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fsl.errors import FslError
from fsl.paths import DEFAULT_CHECKPOINTS, DEFAULT_EPISODES_DIR, FEATURES_ROOT, RESULTS_DIR, RUNS_DIR, Workspace

STORE_HELP = f"where feature stores live (default {FEATURES_ROOT}; set FSL_CACHE to move every cache)"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, checked before any work starts."""
    return bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    return bounded_int(text, 0)


def bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (1e-3 and 0.001 alike)."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a number, not NaN or infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def near_duplicate_threshold(text: str) -> str:
    """argparse type: an image cosine in (0, 1], or 'none'."""
    if text == "none":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an image cosine in (0, 1] or 'none', got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"an image cosine in (0, 1] or 'none', got {text}")
    return text


def port_number(text: str) -> int:
    value = bounded_int(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="Fashion Product Images dump (styles.csv + images/); default $FSL_DATA, else data/fashion-product-images",
    )


def add_encoder_options(parser: argparse.ArgumentParser, default: str | None = "offline", when: str = "") -> None:
    """--encoder and what names its weights, --device, --runtime and --store-root. `default` None: the
    encoder is the head's unless given (`when` says where the option applies)."""
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--encoder",
        default=default,
        choices=["offline", "clip", "aligned", "adapted"],
        help=f"{when}offline: EfficientNet-Lite0 + MiniLM from PyPI wheels (works air-gapped); "
        "clip: open_clip; aligned: the offline pair in one image-text space trained by "
        "`fsl align`; adapted: the offline pair with the image tower's top trained by `fsl adapt` "
        + ("(default offline)" if default == "offline" else "(default: the head's encoder, offline)"),
    )
    group.add_argument("--model", help="open_clip model name or hf-hub:ORG/REPO (clip only; default ViT-B-32)")
    group.add_argument(
        "--pretrained",
        help="clip: open_clip pretrained tag (e.g. openai), a local checkpoint file, or 'none' "
        "for random weights (default openai); aligned: checkpoints/align/NAME/best; adapted: "
        "checkpoints/adapt/NAME/best (split s: checkpoints/adapt/split<s>/NAME/best)",
    )
    group.add_argument("--device", default="cpu", help="torch device (default cpu)")
    group.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "onnx", "eager"],
        help="image tower (and the offline text tower): ONNX Runtime (faster on a CPU; checked "
        "against eager, cosine >= 0.999) or eager PyTorch; auto: ONNX where it works (default)",
    )
    group.add_argument("--store-root", default=str(FEATURES_ROOT), metavar="DIR", help=STORE_HELP)


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    """What `eval` and `train` share: configs and where their inputs and outputs live."""
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="experiments/*.yaml")
    add_data_option(parser)
    parser.add_argument(
        "--episodes-dir", default=str(DEFAULT_EPISODES_DIR), help="root of episode sets (default episodes/)"
    )
    parser.add_argument("--store-root", default=str(FEATURES_ROOT), metavar="DIR", help=STORE_HELP)
    parser.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINTS), help="trained heads (default checkpoints/)")
    add_runs_option(parser, parser.prog.split()[-1])
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, dotted for sections (method_options.C=10, train.lr=3e-4); "
        "repeatable; the run's name gets the change appended",
    )


def add_runs_option(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--runs",
        default=str(RUNS_DIR),
        help=f"TensorBoard root (default {RUNS_DIR}/; this command logs under {RUNS_DIR}/{command})",
    )


def add_folds_options(parser: argparse.ArgumentParser, what: str, trained: str, written: str) -> None:
    """--folds K, --no-final, --fold-by and --results of a command that chooses among candidates on class
    folds (fsl adapt, fsl train, fsl align): `what` the candidates, `trained` how the chosen one is trained
    after."""
    parser.add_argument(
        "--folds",
        type=positive_int,
        metavar="K",
        help=f"choose among the {what}s on K class folds of base and validation classes (4 is a good start): "
        f"each {what} trains K times, fold f on the other folds' classes, scored on fold f's; the best mean "
        f"{trained}. Writes RESULTS/{written}/split<s>.json",
    )
    parser.add_argument("--no-final", action="store_true", help="with --folds: choose only, train no final run")
    parser.add_argument(
        "--fold-by",
        choices=["masterCategory", "subCategory", "none"],
        help="with --folds: each fold holds whole groups of this coarser column (every class of one subCategory "
        "in one fold), so a held-out class has no sibling among the training classes, as a novel class need "
        "not; default: the label column's parent (subCategory for articleType); none: folds of classes alone",
    )
    parser.add_argument(
        "--results", default=str(RESULTS_DIR), help=f"where --folds writes its comparison (default {RESULTS_DIR}/)"
    )


def check_folds_options(args: argparse.Namespace, candidates: str) -> None:
    """--no-final and --fold-by mean something only with --folds: refused without it."""
    given = [flag for flag, value in (("--no-final", args.no_final), ("--fold-by", args.fold_by)) if value]
    if args.folds is None and given:
        raise FslError(f"{' and '.join(given)} goes with --folds (without folds every {candidates} is a final run)")


def folds_results(workspace: Workspace, command: str, split: int, fold_by: str | None) -> Path:
    """Where --folds writes a split's comparison: RESULTS/<command>-folds/split<s>[-by-<column>].json."""
    by = "" if fold_by is None else f"-by-{fold_by}"
    return workspace.results / f"{command}-folds" / f"split{split}{by}.json"


def workspace_from(args: argparse.Namespace) -> Workspace:
    """The workspace a command's flags name (--episodes-dir, --store-root, --checkpoints, --results,
    --runs; a command without one of them gets the default): the one place flags become locations."""
    return Workspace(
        episodes=getattr(args, "episodes_dir", DEFAULT_EPISODES_DIR),
        features=getattr(args, "store_root", FEATURES_ROOT),
        checkpoints=getattr(args, "checkpoints", DEFAULT_CHECKPOINTS),
        results=getattr(args, "results", RESULTS_DIR),
        runs=getattr(args, "runs", RUNS_DIR),
    )


def encoder_config(args):
    from fsl.config import EncoderConfig

    return EncoderConfig(args.encoder, args.model, args.pretrained, args.device, args.runtime)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise FslError(f"environment variable {name}={value!r} must be a whole number (torchrun sets it)")
    return int(value)
