"""Safe file writes and reads: atomic replacement, spreadsheet-safe CSV cells, file-name checks."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fsl.errors import FslError

TEMP_SUFFIX = ".tmp"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets run as a formula
# the files fsl reads as photos (a GIF or multi-page TIFF: its first frame)
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# What reading a damaged .npy or .npz can raise (a cut file, a bad CRC-32, a compression method the zip
# module lacks, a header that is no array, a missing key): each means "damaged", never a traceback.
ARRAY_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, NotImplementedError, zipfile.BadZipFile,
                     zlib.error, struct.error)  # fmt: skip


def check_writable_target(target: Path) -> None:
    """Refuse a target that is a symlink, device, FIFO, socket or folder: only regular files are replaced."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise FslError(
            f"{target} is a symbolic link; fsl writes only to regular files (remove the link "
            "or choose another output path)"
        )
    if not stat.S_ISREG(info.st_mode):
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "device, FIFO or socket"
        raise FslError(f"{target} is a {kind}, not a regular file; choose another output path")


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto the target on success.

    The temporary file is removed whatever happens, and a full or read-only disk becomes an
    FslError naming the target."""
    target = Path(target)
    check_writable_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as error:
        raise disk_error(error, target) from None
    os.close(fd)
    try:
        yield Path(tmp)
        check_writable_target(target)  # it may have appeared while we wrote
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, target)
    except OSError as error:
        raise disk_error(error, target) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_replaceable_folder(folder: Path, marker: str | None) -> None:
    """A folder a save may write: a new one, an empty one, or one this kind of save wrote itself (it
    holds `marker`). Anything else (a file, a folder of other files, the folder the process runs in
    or one above it) is refused, naming it: a save never deletes what it did not write."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FslError(f"cannot save to {folder}: it is a file or a link, not a folder; choose a new folder name")
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise FslError(f"cannot save to {folder}: this program runs in it (or in a folder inside it); choose another")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if marker is None or not (folder / marker).is_file():
        raise FslError(
            f"cannot save to {folder}: it holds files fsl did not write"
            + (f" (no {marker})" if marker else "")
            + "; choose a new or empty folder, nothing there was touched"
        )


@contextmanager
def atomic_folder(folder: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `folder`; on success it replaces `folder` whole (the old
    one kept aside until the new one is in place), so a failed write loses nothing. `folder` must be
    new, empty, or one such a save wrote (holding `marker`): see check_replaceable_folder."""
    folder = Path(os.path.abspath(folder))
    check_replaceable_folder(folder, marker)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as error:
        raise disk_error(error, folder) from None
    try:
        yield staging
        check_replaceable_folder(folder, marker)  # it may have been filled while we wrote
        if folder.exists():
            retired = folder.with_name(f".{folder.name}.replaced")
            shutil.rmtree(retired, ignore_errors=True)
            folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(folder)
    except OSError as error:
        raise disk_error(error, folder) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def disk_error(error: OSError, target: Path) -> Exception:
    """A write failure as a message: full disk and read-only folders are the user's to fix."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    if error.errno in reasons:
        return FslError(
            f"cannot write {target}: {reasons[error.errno]}; nothing was left half-written. "
            "Free space or choose another folder, then run the command again"
        )
    if error.errno is None and "requested and" in str(error):  # numpy's short write, which sets no errno
        try:
            free = f"{shutil.disk_usage(Path(target).parent).free / 2**20:.0f} MiB free there now"
        except OSError:
            free = "its free space unknown"
        return FslError(
            f"cannot write {target}: the write stopped short ({error}), most likely a full disk ({free}); "
            "nothing was left half-written. Free space or choose another folder, then run the command again"
        )
    return error


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of writes that were killed (kill -9 skips every `finally`): call under the writer lock."""
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(target: str | os.PathLike, payload: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """JSON from a file of ours, or an FslError that names the file (never a traceback)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FslError(
            f"{path}: the {what} cannot be read ({error}); it is damaged or not one of fsl's files. "
            "Remove it and run the command that writes it again"
        ) from None


NUMBER = (int, float)


def check_record(
    record: Any, fields: dict[str, tuple[type, ...]], path: str | os.PathLike, what: str, fix: str
) -> dict:
    """A JSON sidecar (checkpoint, calibration, alignment, index) as its schema declares it: a JSON
    object holding each field with a value of one of its types (a bool is no number), or an FslError
    naming the file, the field and `fix`, the command that writes the file again."""
    if not isinstance(record, dict):
        raise FslError(f"{path}: the {what} is damaged (expected a JSON object); {fix}")
    for name, kinds in fields.items():
        if name not in record:
            raise FslError(f"{path}: the {what} is damaged (it lacks {name!r}); {fix}")
        if type(record[name]) not in kinds:
            raise FslError(
                f"{path}: the {what} is damaged ({name} is {type(record[name]).__name__}, "
                f"expected {' or '.join(k.__name__ for k in kinds)}); {fix}"
            )
    return record


def write_bytes(target: str | os.PathLike, payload: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)
    return Path(target)


def write_npy(target: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def escape_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def unescape_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def write_csv(frame: pd.DataFrame, target: str | os.PathLike) -> Path:
    """Every CSV fsl writes: atomic, text cells escaped against formula injection."""
    escaped = frame.copy()
    for column in escaped.columns:
        if escaped[column].dtype == object or pd.api.types.is_string_dtype(escaped[column]):
            escaped[column] = escaped[column].map(escape_cell)
    escaped.columns = [escape_cell(str(c)) for c in escaped.columns]
    with atomic_path(target) as tmp:
        escaped.to_csv(tmp, index=False)
    return Path(target)


def read_csv(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """A CSV that fsl wrote, with its escaped cells restored."""
    frame = pd.read_csv(path, **kwargs)
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(unescape_cell)
    return frame


def safe_name(name: Any, what: str) -> str:
    """A name from a config or a user that becomes part of a path: no separators, no `..`."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise FslError(
            f"{what} {name!r} cannot be used as a file name: use letters, digits and . _ + - "
            "(starting with a letter or digit, no '/' and no '..')"
        )
    return name
