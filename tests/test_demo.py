"""`make demo`'s job runs and hears every speaker (a short run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rxvoice.__main__ import main


async def test_demo_records_every_speaker(tmp_path: Path) -> None:
    # The demo runs its own event loop: give it a thread.
    code = await asyncio.to_thread(
        main, ["demo", "--speakers", "2", "--seconds", "2", "--out", str(tmp_path)]
    )
    assert code == 0
    wavs = sorted(p.name for p in tmp_path.glob("*.wav"))
    assert "mix.wav" in wavs and len(wavs) == 3
