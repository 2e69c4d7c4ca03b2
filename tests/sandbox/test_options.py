"""SandboxOptions: validated once; the CLI's flags and Sandbox(**kwargs) both build one."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from rxvoice.errors import InvalidArgument, UsageError
from rxvoice.testing.sandbox import Faults, Sandbox, SandboxOptions
from rxvoice.testing.sandbox.cli import add_arguments, options_from, run

XCHACHA = "aead_xchacha20_poly1305_rtpsize"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"host": "::1"}, "IPv4"),
        ({"host": "localhost"}, "IPv4"),
        ({"port": 65535}, "port"),
        ({"speakers": -1}, "speakers"),
        ({"speakers": 100}, "speakers must be between 0 and 99"),  # joins timed out at 200
        ({"voices": "song"}, "voices"),
        ({"dave": False, "require_dave": True}, "require_dave"),
        ({"resume_window": -0.5}, "resume_window"),
        ({"modes": ()}, "modes"),
        ({"modes": ("xsalsa20_poly1305",)}, "modes"),
        ({"heartbeat_interval": 0.0}, "heartbeat"),
        ({"gateway_heartbeat_interval": -1.0}, "heartbeat"),
        ({"transition_timeout": 0.0}, "transition_timeout"),
        ({"replay_limit": 0}, "replay_limit"),
        ({"resume_gap_code": 99}, "resume_gap_code"),
        ({"rtcp_interval": -1}, "rtcp_interval"),
        ({"channels": 0}, "channels"),
        ({"guild_id": "not-a-snowflake"}, "guild_id"),
        ({"channel_id": "01"}, "channel_id"),
    ],
)
def test_each_bad_option_is_one_clear_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SandboxOptions(**changes)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=message):
        Sandbox(**changes)  # the same check, as Sandbox(**kwargs) always did


def test_options_are_frozen_and_sandbox_takes_them_or_keywords() -> None:
    options = SandboxOptions(speakers=2, modes=[XCHACHA])  # type: ignore[arg-type]
    assert options.modes == (XCHACHA,)  # stored as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.speakers = 3  # type: ignore[misc]
    assert Sandbox(options).options is options
    changed = Sandbox(options, dave=False, guild_id="42").options
    assert (changed.speakers, changed.dave, changed.modes) == (2, False, (XCHACHA,))
    sb = Sandbox(guild_id="42", channel_id="43", channels=3)
    assert (sb.guild_id, sb.channel_id, len(sb.channel_ids)) == ("42", "43", 3)
    with pytest.raises(TypeError):
        Sandbox(no_such_option=1)


def parse(*argv: str) -> SandboxOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from(parser.parse_args(argv))


def test_cli_flags_map_onto_the_options() -> None:
    defaults = parse()
    assert defaults == SandboxOptions(faults=Faults())  # the flags' defaults are the fields'
    options = parse(
        "--host", "0.0.0.0", "--port", "4000", "--speakers", "3", "--voices", "speech",
        "--continuous", "--no-dave", "--resume-window", "2.5", "--loss", "5", "--seed", "7",
    )  # fmt: skip
    assert options == SandboxOptions(
        host="0.0.0.0",
        port=4000,
        speakers=3,
        voices="speech",
        continuous_speech=True,
        dave=False,
        resume_window=2.5,
        faults=Faults(loss=0.05, seed=7),
    )
    assert parse("--require-dave").require_dave
    with pytest.raises(InvalidArgument, match="--loss"):
        parse("--loss", "101")
    with pytest.raises(InvalidArgument, match="resume_window"):
        parse("--resume-window", "-1")


@pytest.mark.parametrize(
    "argv", [("--resume-window", "-1"), ("--loss", "150"), ("--host", "::1"), ("--port", "65535")]
)
def test_a_bad_flag_is_one_line_and_exit_2(argv: tuple[str, ...], capsys) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rxvoice sandbox: error: ") and err.count("\n") == 1
