"""The live view: what the monitor counts, and a table that fits 80 columns."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from rich.console import Console

from rxvoice.events import (
    ClientConnect,
    ClientDisconnect,
    DaveEpochTransition,
    PcmChunk,
    VoiceActivityChange,
)
from rxvoice.testing.packets import ToneSpeaker, audio_frame, tone_pcm
from rxvoice.view import FLOOR_DB, CallMonitor, LiveView, _with_breaks, plot_timeline

ADA = ToneSpeaker("1001", 11)
NAMES = {"1001": "Ada", "1002": "Bartholomew the Magnificent of Somewhere Far"}


def monitor_of_a_call() -> CallMonitor:
    now = [100.0]
    monitor = CallMonitor(100.0, names=NAMES, clock=lambda: now[0])
    for n in (0, 1, 2, 5, 6):  # 3 and 4 lost
        monitor.on_frame(audio_frame(n, ADA, b"\x00"))
    loud = tone_pcm(440, 0)
    monitor.on_chunk(PcmChunk("1001", 11, 0, loud, time=100.0))
    monitor.on_chunk(PcmChunk("1001", 11, 960, loud, concealed=True, time=100.02))
    monitor.on_chunk(PcmChunk("1001", 11, 1920, loud, recovered=True, time=100.5))
    monitor.on_activity(VoiceActivityChange("1001", 11, True, 0, 100.0))
    monitor.on_roster(ClientConnect("1002"))
    monitor.on_roster(ClientConnect("1003"))
    monitor.on_roster(ClientDisconnect("1003"))
    now[0] = 101.5
    monitor.on_transition(
        DaveEpochTransition(4, 1, 7, ("1001", "1002", "999"), "123456789012345678901234567890")
    )
    now[0] = 102.0
    return monitor


def test_the_monitor_counts_per_user() -> None:
    monitor = monitor_of_a_call()
    ada = monitor.users["1001"]
    assert (ada.packets, ada.lost, ada.concealed, ada.recovered) == (5, 2, 1, 1)
    assert ada.speaking and ada.level > -15 and ada.spans == [(0.0, None)]
    assert [t for t, _ in ada.levels] == [0.0, 0.5]  # 100 ms bins, peak kept
    assert not monitor.users["1003"].present and monitor.epoch == 4
    assert monitor.totals() == (5, 2, 1, 1)
    assert monitor.epochs[0].time == 1.5 and monitor.epochs[0].members == 3
    line = monitor.status_line()
    assert "speaking: Ada" in line and "lost 2" in line and "DAVE epoch 4, 3 in group" in line
    monitor.finish(103.0)
    assert ada.spans == [(0.0, 3.0)]
    monitor.on_activity(VoiceActivityChange("1001", 11, False, 0, 103.0))
    assert not ada.speaking and ada.level == FLOOR_DB


def rendered(monitor: CallMonitor, width: int) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(
        monitor.render()
    )
    return buffer.getvalue()


def test_the_table_fits_80_columns() -> None:
    monitor = monitor_of_a_call()
    for k in range(6):
        monitor.on_roster(ClientConnect(str(5_000_000_000_000_000_000 + k)))
    # On a wide console the table takes its own width (a console of 80 would crop
    # anything to 80 and prove nothing); at 80 it is the same, nothing squeezed.
    wide, text = rendered(monitor, 200), rendered(monitor, 80)
    table = wide.split("DAVE epoch")[0]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert text.split("DAVE epoch")[0] == table
    assert "Ada" in text and "●" in text and "(left)" in text
    assert "privacy code 12345 67890 12345 67890 12345 67890" in text
    assert "DAVE epoch 4, 3 in the group: Ada, Bartholomew" in text


async def test_in_a_terminal_the_view_is_a_live_table() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    view = LiveView(monitor_of_a_call(), console)
    assert view.interactive
    async with view:
        pass
    assert "pkts" in buffer.getvalue() and "Ada" in buffer.getvalue()


def test_the_timeline_plot(tmp_path: Path) -> None:
    monitor = monitor_of_a_call()
    monitor.finish(103.0)
    path = tmp_path / "timeline.png"
    plot_timeline(monitor, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    times, values = _with_breaks([(0.0, -20.0), (0.1, -21.0), (2.0, -19.0)])
    assert times[:2] == [0.0, 0.1] and math.isnan(values[2]) and times[3:] == [2.0]
    assert np.isfinite(values[3])


def test_attach_starts_from_the_call_as_it_is() -> None:
    from types import SimpleNamespace

    from reactivex.subject import Subject

    dave = SimpleNamespace(
        ready=True, epoch=2, protocol_version=1, members=("1001", "7"), privacy_code="12345"
    )
    conn = SimpleNamespace(
        users={"1002", "1001"},
        dave=dave,
        on_audio_frame=Subject(),
        on_dave_epoch_transition=Subject(),
        on_client_connect=Subject(),
        on_client_disconnect=Subject(),
    )
    monitor = CallMonitor(5.0, names=NAMES, clock=lambda: 5.0)
    subscriptions = monitor.attach(conn, Subject(), Subject())  # type: ignore[arg-type]
    assert [u.user_id for u in monitor.rows()] == ["1001", "1002"]  # silent, but in the call
    assert monitor.epoch == 2 and monitor.members == ("1001", "7")
    conn.on_client_disconnect.on_next(ClientDisconnect("1002"))
    assert not monitor.users["1002"].present
    for subscription in subscriptions:
        subscription.dispose()
