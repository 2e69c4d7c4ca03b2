"""Run every benchmark: ``make bench`` (or ``python benchmarks/run.py``).

Prints Markdown tables; docs/benchmarks.md keeps the latest results with the
machine they came from. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    print(
        f"python {platform.python_version()}, {platform.machine()}, {platform.processor() or '?'}"
    )
    for script in ("bench_receive.py", "bench_audio.py", "bench_nats.py"):
        print(f"\n## {script}\n", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
