"""`make demo`'s job, the command line's errors, --version and a missing libopus."""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path

import pytest

from rxvoice import __version__
from rxvoice.__main__ import main
from rxvoice.audio import opus
from rxvoice.errors import OpusUnavailable


def seconds_of(path: Path) -> float:
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


async def test_the_demo_shows_a_call_and_leaves_named_aligned_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song = tmp_path / "my_song.wav"
    song.write_bytes(b"a user's own file")
    (tmp_path / "mix.wav").write_bytes(b"an older mix")
    (tmp_path / "timeline.png").write_bytes(b"an older plot")
    # The demo runs its own event loop: give it a thread. With loss, so the
    # view and the summary have losses, concealment and FEC to show.
    args = ["demo", "--speakers", "1", "--seconds", "4", "--loss", "20", "--out", str(tmp_path)]
    code = await asyncio.to_thread(main, args)
    out = capsys.readouterr().out
    assert code == 0, out
    # Nothing it did not write was touched: the old mix kept, the new one renamed.
    assert song.read_bytes() == b"a user's own file"
    assert (tmp_path / "mix.wav").read_bytes() == b"an older mix"
    wavs = sorted(
        p.name for p in tmp_path.glob("*.wav") if p.name not in ("my_song.wav", "mix.wav")
    )
    # The speaker, the one who joined midway (named by speaker), and the mix.
    assert [name.split("-")[0] for name in wavs] == ["Ada", "Ben", "mix"]
    assert wavs[-1] == "mix-2.wav" and "listen: aplay" in out
    lengths = {round(seconds_of(tmp_path / name), 3) for name in wavs}
    assert len(lengths) == 1 and lengths.pop() > 3.5  # one timeline for all
    assert (tmp_path / "timeline.png").read_bytes() == b"an older plot"
    assert (tmp_path / "timeline-2.png").stat().st_size > 10_000
    # Not a terminal: a status line per second, then the summary and the checks.
    assert out.count("speaking:") >= 3
    summary = next(line for line in out.splitlines() if line.strip().startswith("heard"))
    lost, concealed, fec = (
        int(summary.split(word)[0].split()[-1]) for word in (" lost", " concealed", " recovered")
    )
    assert lost > 0 and concealed + fec > 0
    assert out.count("[ ok ]") == 2
    # The first epoch with us in the group, then one for the join, one for the leave.
    epochs = [int(e) for e in out.split("DAVE epochs seen: ")[1].split("\n")[0].split(", ")]
    assert len(epochs) == 3 and epochs == list(range(epochs[0], epochs[0] + 3))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--speakers", "0"], "--speakers: must be between 1 and 7"),
        (["demo", "--speakers", "200"], "--speakers: must be between 1 and 7"),
        (["demo", "--seconds", "-1"], "--seconds: must be more than 0"),
        (["demo", "--loss", "150"], "--loss: must be between 0 and 100"),
        (["record", "--guild", "x", "--channel", "1"], "--guild: 'x' is not a Discord id"),
        (["record", "--channel", "1"], "required: --guild"),
        (["record", "--guild", "1", "--channel", "2", "--users", "1,bob"], "'bob' is not"),
        (["record", "--guild", "1", "--channel", "2", "--seconds", "0"], "must be positive"),
        (["record", "--guild", "007", "--channel", "2"], "'007' is not a Discord id"),
        (
            ["record", "--guild", "1", "--channel", "2", "--gateway-url", "gateway.example"],
            "--gateway-url: 'gateway.example' is not a ws:// or wss:// URL",
        ),
        # A file where the folder should be: refused before joining, not at the first chunk.
        (["record", "--guild", "1", "--channel", "2", "--out", __file__], "is not a folder"),
        (["demo", "--out", __file__], "is not a folder"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and says in err and err.startswith("rxvoice")


def test_record_needs_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["record", "--guild", "1", "--channel", "2"]) == 2
    assert (
        capsys.readouterr().err == "rxvoice record: error: set DISCORD_TOKEN to the bot's token\n"
    )


def test_record_refuses_a_ca_file_that_is_not_pem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "not-used")
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    assert main(["record", "--guild", "1", "--channel", "2", "--ca-file", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rxvoice record: error: --ca-file {junk}")


def test_record_names_an_unreachable_gateway(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rxvoice import record

    monkeypatch.setenv("DISCORD_TOKEN", "not-used")
    monkeypatch.setattr(record, "GATEWAY_TIMEOUT", 0.3)
    with socket.socket() as listener:  # a port nobody listens on once closed
        listener.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
    assert main(["record", "--guild", "1", "--channel", "2", "--gateway-url", url]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"rxvoice record: error: no answer from the gateway at {url} in 0.3 s "
        "(check --gateway-url and the network)\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"rxvoice {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--seconds", "1"],
        ["record", "--guild", "1", "--channel", "2"],
        ["sandbox", "--speakers", "1"],
    ],
)
def test_without_libopus_every_command_says_so_in_one_line(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    def missing() -> opus._Lib:
        raise OpusUnavailable()

    monkeypatch.setattr(opus, "_load", missing)
    monkeypatch.setenv("DISCORD_TOKEN", "not-used")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "libopus is not installed" in captured.err
    assert "Traceback" not in captured.err and list(tmp_path.iterdir()) == []
