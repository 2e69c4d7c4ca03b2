"""Package hygiene: lazily loaded names are visible to dir() and tab completion."""

from __future__ import annotations

import json
import subprocess
import sys

import rxvoice
import rxvoice.testing

_PROBE = """
import json, sys
import rxvoice, rxvoice.testing
names = {"rxvoice": dir(rxvoice), "rxvoice.testing": dir(rxvoice.testing)}
loaded = [m for m in ("rxvoice.connection", "rxvoice.shard", "rxvoice.testing.sandbox")
          if m in sys.modules]
print(json.dumps({"names": names, "loaded": loaded}))
"""


def test_dir_lists_lazy_names_before_they_are_loaded():
    # A fresh interpreter: in this one, other tests may have loaded the names already.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    probe = json.loads(out.stdout)
    assert probe["loaded"] == []  # listing names imports nothing
    assert {"Connection", "ConnectionStats", "GatewayShard", "Shard"} <= set(
        probe["names"]["rxvoice"]
    )
    assert {"Sandbox", "ToneSpeaker", "voice_marbles"} <= set(probe["names"]["rxvoice.testing"])


def test_dir_covers_every_public_and_lazy_name():
    for package in (rxvoice, rxvoice.testing):
        names = dir(package)
        assert names == sorted(set(names))
        assert set(package.__all__) <= set(names), package.__name__
        assert {"__getattr__", "__dir__", "__name__"} <= set(names)
        # The __init__'s own helpers are not part of the API.
        assert not {"TYPE_CHECKING", "annotations", "lazy_getattr", "lazy_dir"} & set(names)
    assert set(rxvoice._LAZY) <= set(dir(rxvoice))
    assert set(rxvoice.testing._WHERE) <= set(dir(rxvoice.testing))
    assert {"errors", "events", "testing", "__version__"} <= set(dir(rxvoice))
