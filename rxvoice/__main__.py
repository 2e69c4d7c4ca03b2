"""The ``rxvoice`` command line: ``python -m rxvoice <command> ...``.

Each command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; add a command by adding a line to ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (module, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rxvoice.demo", "record and mix simulated speakers of a local DAVE call"),
    "sandbox": ("rxvoice.testing.sandbox.cli", "run a local Discord (gateway, voice, relay)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), run the command, return its exit code."""
    parser = argparse.ArgumentParser(
        prog="rxvoice", description="rxvoice: Discord voice as reactive streams."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(commands.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args))


if __name__ == "__main__":
    sys.exit(main())
