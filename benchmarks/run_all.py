"""Run every benchmark in turn (`make bench`); each prints its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ["embed_speed.py", "sampler_speed.py", "heads_speed.py"]

if __name__ == "__main__":
    here = Path(__file__).parent
    failed = [name for name in BENCHMARKS
              if subprocess.run([sys.executable, str(here / name), *sys.argv[1:]]).returncode != 0]
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
