"""`rmlora <command> ...`: one entry point, one module per command under rmlora.cli.

Every command module defines `HELP` (one line) and `main(argv: list[str]) -> int`. Errors of bad input
(rmlora.errors.RMLoraError and its subclasses) are printed as one line, without a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from rmlora import __version__
from rmlora.errors import RMLoraError

# command name -> module; a module that is not there (yet) is not listed
COMMANDS = {
    "demo": "rmlora.cli.demo",
    "train": "rmlora.cli.train",
    "inspect": "rmlora.cli.inspect",
    "compare": "rmlora.cli.compare",
    "report": "rmlora.cli.report",
    "bench": "rmlora.cli.bench",
    "rank-budget": "rmlora.cli.rank_budget",
    "synthetic": "rmlora.cli.synthetic",
    "assets": "rmlora.cli.assets",
    "recipe": "rmlora.cli.recipe",
}


def _available() -> dict[str, str]:
    return {name: mod for name, mod in COMMANDS.items() if importlib.util.find_spec(mod) is not None}


def _usage(commands: dict[str, str]) -> str:
    lines = ["usage: rmlora <command> [options]   (rmlora <command> --help for a command's flags)", "", "commands:"]
    for name, mod in commands.items():
        help_line = getattr(importlib.import_module(mod), "HELP", "")
        lines.append(f"  {name:<12} {help_line}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0
    if argv[0] == "--version":
        print(f"rmlora {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"rmlora: error: unknown command {name!r}; choose one of: {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(commands[name]).main(rest) or 0)
    except RMLoraError as e:
        print(f"rmlora {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmlora {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
