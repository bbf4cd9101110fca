"""Run every benchmark script in this folder, one after the other (results go to stdout)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"=== {script.name}", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
print("failed:", ", ".join(failed) if failed else "none")
sys.exit(1 if failed else 0)
