"""Run every benchmark: ``make bench`` (or ``python benchmarks/run.py [--quick]``).

Prints Markdown tables; docs/benchmarks.md keeps the latest results with the
machine they came from. Not a test: nothing here asserts a speed. ``--quick``
runs fewer repeats and a short end-to-end run (N = 10, 50); a full run also
runs the rxvoice frames client on uvloop (where ``rxvoice[speed]`` is installed) and
redraws docs/benchmarks-e2e.png.
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
    quick = "--quick" in sys.argv[1:]
    args = [arg for arg in sys.argv[1:] if arg != "--quick"] + (["--repeat", "2"] if quick else [])
    e2e = (
        ["--quick"]
        if quick
        else ["--uvloop", "--plot", str(HERE.parent / "docs" / "benchmarks-e2e.png")]
    )
    for script, script_args in (
        ("bench_receive.py", args),
        ("bench_audio.py", args),
        ("bench_nats.py", args),
        ("bench_e2e.py", e2e),
    ):
        print(f"\n## {script}\n", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *script_args])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
