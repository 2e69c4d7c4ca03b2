"""The ``rxvoice`` command line: ``python -m rxvoice <command> ...``.

Each command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; add a command by adding a line to ``_COMMANDS``.

Every error is one line on standard error, never a traceback: a bad option
or a missing token exits 2 (as argparse does); a failure to run, such as
libopus missing, exits 1; Ctrl-C exits 130 unless the command handles it
(``record`` and ``demo`` stop cleanly and exit as usual). ``--version``
prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]

# name -> (module, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rxvoice.demo", "watch and record simulated people talking in a local DAVE call"),
    "record": ("rxvoice.record", "record a voice channel: one WAV per user on the call's timeline"),
    "sandbox": ("rxvoice.testing.sandbox.cli", "run a local Discord (gateway, voice, relay)"),
}

EXIT_FAILED = 1
"""The command could not do its job (libopus missing, the gateway refused us, ...)."""

EXIT_USAGE = 2
"""Bad options or a missing setting (argparse's code)."""

EXIT_INTERRUPTED = 130
"""Ctrl-C before the command could stop cleanly by itself (128 + SIGINT)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): ``prog: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), run the command, return its exit code."""
    from rxvoice import __version__
    from rxvoice.errors import RxVoiceError

    parser = _Parser(prog="rxvoice", description="rxvoice: Discord voice as reactive streams.")
    parser.add_argument("--version", action="version", version=f"rxvoice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(commands.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args))
    except (RxVoiceError, OSError, TimeoutError) as error:
        # libopus missing, a port in use, a folder that cannot be written...
        text = str(error) or type(error).__name__
        print(f"rxvoice {args.command}: error: {text}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before a command's own Ctrl-C handling is in place
        print(f"rxvoice {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
