"""The live mix of a lossy call holds what the users' decoded streams hold (issue 12 item 8)."""

from __future__ import annotations

from collections import Counter

import pytest
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.events import PcmChunk
from rxvoice.testing.sandbox import Sandbox
from tests.mixcheck import check_mix

from .conftest import Join
from .helpers import Recorder

TICKS = 150  # 3 s of mix: each speaker's talk spurt (1 s), pause (0.6 s), next spurt


@pytest.mark.sandbox(speakers=3)
async def test_the_mix_of_a_call_at_10_percent_loss_has_no_holes(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join()
    speakers = {s.user_id for s in sandbox.speakers}
    await sandbox.wait_for(lambda: (d := sandbox.dave()) is not None and len(d.members) == 4)
    sandbox.set_faults(loss=0.1, seed=8)
    pcm = conn.on_audio_frame.pipe(vops.decode_opus(), ops.share())
    stats: Counter[str] = Counter()
    decoded: Recorder[PcmChunk] = Recorder(pcm)
    mixed: Recorder[PcmChunk] = Recorder(pcm.pipe(vops.mix(stats=stats)))
    await mixed.wait_for(lambda ticks: len(ticks) >= TICKS, timeout=20)
    mixed.dispose()
    decoded.dispose()

    # Up to the tick 0.3 s before the last: every chunk of call time up to there
    # had arrived (at most the mix's 0.2 s delay late, or it was counted late).
    check = check_mix([*decoded.items, *mixed.items], until=len(mixed.items) - 1 - 15)
    users = [c for c in decoded.items if c.time <= mixed.items[-16].time]
    assert {c.user_id for c in users} == speakers
    assert sum(c.concealed or c.recovered for c in users) >= 10  # the loss is there
    assert check.heard >= 200 and check.audible >= 60
    # Every chunk with audio is in the mix, in the tick of its call time, and
    # every tick is exactly the sum of its users' chunks.
    assert check.holes == 0 and check.mismatched == 0, check
    assert stats["late_chunk"] == stats["late_spurt"] == stats["duplicate_chunk"] == 0, stats
