"""Fetch the Fashion Product Images dump from Kaggle (kagglehub) when the machine is online."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fsl.errors import FslError

KAGGLE_HANDLE = "paramaggarwal/fashion-product-images-small"


def download(dest: str | os.PathLike) -> Path:
    """Download the dump and lay it out as DEST/styles.csv + DEST/images/<id>.jpg."""
    dest = Path(dest)
    if (dest / "styles.csv").is_file():
        return dest
    by_hand = (
        f"Put a dump there by hand: download {KAGGLE_HANDLE} from Kaggle on a machine with "
        f"internet and unpack it so that {dest / 'styles.csv'} and {dest / 'images'}/<id>.jpg "
        "exist (or point --data / FSL_DATA at it)."
    )
    try:
        import kagglehub

        fetched = Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except ImportError:
        raise FslError(f"kagglehub is not installed (pip install kagglehub). {by_hand}") from None
    except Exception as error:  # kagglehub raises requests/HTTP/auth errors alike: all mean "not fetched"
        raise FslError(f"could not download {KAGGLE_HANDLE} ({type(error).__name__}: {error}). {by_hand}") from None
    styles = next(fetched.rglob("styles.csv"), None)
    if styles is None or not (styles.parent / "images").is_dir():
        raise FslError(f"the download at {fetched} has no styles.csv beside images/. {by_hand}")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(styles, staging / "styles.csv")
    shutil.copytree(styles.parent / "images", staging / "images")
    staging.rename(dest)  # all or nothing
    return dest
