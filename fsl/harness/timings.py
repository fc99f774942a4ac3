"""How long a command took on a config last time, so the next run can say so before it starts."""

from __future__ import annotations

import time

from fsl.errors import FslError
from fsl.files import read_json, write_json
from fsl.paths import timing_path


def record_run(command: str, name: str, splits: list[int], seconds: float) -> None:
    """Remember one finished run (a cache: a write that fails costs nothing but the estimate)."""
    try:
        write_json(timing_path(command, name), {"splits": list(splits), "seconds": seconds, "finished": time.time()})
    except (FslError, OSError):
        pass


def last_run(command: str, name: str) -> dict | None:
    """{"splits", "seconds", "finished"} of the last finished run, or None."""
    path = timing_path(command, name)
    try:
        record = read_json(path, "timing record") if path.is_file() else None
    except FslError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)) else None


def duration(seconds: float) -> str:
    """12.3 s, 5 min 54 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def plan_line(command: str, name: str, splits: list[int]) -> str:
    """What a run is about to do: `NAME: splits 0 1 2 3 4 (last run of splits 0 1 2 3 4: 12.1 s)`."""
    said = f"{name}: split{'s' if len(splits) > 1 else ''} {' '.join(map(str, splits))}"
    last = last_run(command, name)
    if last is not None:
        said += f" (last run, splits {' '.join(map(str, last['splits']))}: {duration(last['seconds'])})"
    return said
