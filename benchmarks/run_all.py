"""Run every benchmark in turn (`make bench`): each `benchmarks/*.py` but this runner, the README
generator and the class-fold benchmarks' shared report; each prints its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NOT_BENCHMARKS = {"run_all.py", "update_readme.py", "fold_report.py"}

if __name__ == "__main__":
    here = Path(__file__).parent
    BENCHMARKS = sorted(p.name for p in here.glob("*.py") if p.name not in NOT_BENCHMARKS)
    failed = [
        name for name in BENCHMARKS if subprocess.run([sys.executable, str(here / name), *sys.argv[1:]]).returncode != 0
    ]
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
