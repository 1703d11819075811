"""Time `ft smoke` on every shipped recipe, offline, against a Hugging Face cache that holds only
configs and tokenizers (tests/_fake_hub.py). Prints a Markdown table for benchmarks/README.md.

    OMP_NUM_THREADS=2 python benchmarks/smoke_times.py [RECIPE ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._fake_hub import write_fake_hub  # noqa: E402


def main(names: list[str]) -> int:
    recipes = [ROOT / "recipes" / f"{n}.yaml" for n in names] or sorted((ROOT / "recipes").glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HOME": str(write_fake_hub(Path(tmp) / "hf")), "HF_HUB_OFFLINE": "1"}
        print("| recipe | result | wall time (s) |\n| --- | --- | --- |")
        failed = 0
        for recipe in recipes:
            started = time.time()
            done = subprocess.run(["ft", "smoke", str(recipe), "--work-dir", str(Path(tmp) / recipe.stem)],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]
            failed += done.returncode != 0
            print(f"| {recipe.stem} | {'pass' if done.returncode == 0 else 'FAIL: ' + verdict} | "
                  f"{time.time() - started:.1f} |", flush=True)
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
