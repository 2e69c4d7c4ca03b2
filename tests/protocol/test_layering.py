"""The sans-I/O core imports without asyncio, websockets or reactivex."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import rxvoice.protocol, rxvoice.audio
for package in (rxvoice.protocol, rxvoice.audio):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
import rxvoice  # the package's names load the reactive layer only when used
loaded = [name for name in ("asyncio", "websockets", "reactivex") if name in sys.modules]
print(",".join(loaded))
"""


def test_the_core_loads_no_io_or_reactive_library():
    # A fresh interpreter: this test process has loaded everything already.
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_the_package_names_still_resolve():
    import rxvoice

    assert rxvoice.Connection.__name__ == "Connection"
    assert rxvoice.GatewayShard.__name__ == "GatewayShard"
    assert set(rxvoice.__all__) <= set(dir(rxvoice)) | set(rxvoice._LAZY)
