"""How fast `fsl demo` serves its page from an empty folder with no dataset (no --data, no FSL_DATA),
as a practitioner starts it: once with an empty cache (the ONNX export of the encoder included) and
once warm. Prints the seconds to the first page served; MISSED beside a time over the target.

    python benchmarks/demo_start.py [--encoder offline]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from demo_load import free_port  # a sibling script (benchmarks/ is on sys.path)

TARGET_S = 15.0


def seconds_to_page(folder: Path, cache: Path, encoder: str) -> float:
    """Start `fsl demo` in `folder` and poll its page until it answers; the process is stopped after."""
    env = {k: v for k, v in os.environ.items() if k not in ("FSL_DATA", "FSL_CACHE")}
    env.update(FSL_CACHE=str(cache), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "fsl.cli", "demo", "--encoder", encoder, "--port", str(port)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while process.poll() is None and time.perf_counter() - started < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as page:
                    if page.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"fsl demo did not serve a page (exit code {process.poll()})")
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="offline", help="the encoder the demo starts with (default offline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsl-demo-start-") as work:
        folder, cache = Path(work) / "empty", Path(work) / "cache"
        folder.mkdir()
        rows = [(kind, seconds_to_page(folder, cache, args.encoder)) for kind in ("cold cache", "warm cache")]
    print(f"| `fsl demo` from an empty folder, no dataset ({args.encoder}) | seconds to the page | target |")
    print("|---|---|---|")
    for kind, seconds in rows:
        print(f"| {kind} | {seconds:.1f} | < {TARGET_S:.0f}{'' if seconds < TARGET_S else ' MISSED'} |")
