"""A small dispatcher for command lines made of subcommands, each a module imported only when needed.

Each subcommand module has ``add_arguments(parser)`` and ``run(args) -> int``. A PansegError becomes one line on
stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

from runtime.errors import PansegError


def build_parser(prog: str, description: str, subcommands: Mapping[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in subcommands.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sp)
        sp.set_defaults(_module=module_name)
    return parser


def _bounded_int(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


positive_int = _bounded_int(1, "positive")  # argparse type= for counts such as --workers
non_negative_int = _bounded_int(0, "non-negative")  # argparse type= for seeds and offsets


def report_errors(prog: str, func: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run a command's body: a PansegError becomes one line on stderr and exit 1, Ctrl-C ``interrupted`` and exit
    130."""
    try:
        return int(func() or 0)
    except PansegError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def run_subcommand(
    prog: str, description: str, subcommands: Mapping[str, tuple[str, str]], argv: Sequence[str] | None = None
) -> int:
    args = build_parser(prog, description, subcommands).parse_args(argv)
    return report_errors(f"{prog} {args.command}", lambda: importlib.import_module(args._module).run(args))
