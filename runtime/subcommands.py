"""The command-line vocabulary shared by every panseg command, and a small dispatcher for subcommands.

Vocabulary (one place, so every command speaks it): the model is the first positional argument; ``-o/--output`` is
what a command writes; ``--json FILE`` also writes the machine-readable result to FILE; ``--no-progress`` turns
progress bars off; shapes are ``HxW`` / ``BxHxW`` (height before width) read by :func:`parse_hw` / :func:`parse_bhw`;
numbers are checked by the argparse types below, so a bad value is a usage error (exit 2) like a misspelt flag. Old
spellings stay for one release as hidden aliases (:func:`add_deprecated`) that print a one-line note.

Each subcommand module has ``add_arguments(parser)`` and ``run(args) -> int``, and optionally
``finish_arguments(args, parser)`` to fold deprecated spellings into the new ones and ``MORE_POSITIONALS`` (the dest
of a positional list that may continue after the options). A PansegError becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.errors import PansegError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: message (see prog --help)``, exit 2), like PansegError's
    one line, so that a bad number and a bad file read alike."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, plus the required check of options that also have a deprecated alias (argparse only sees
        the spelling it was given, see :func:`add_deprecated`)."""
        namespace, extras = super().parse_known_args(args, namespace)
        missing = ["/".join(a.option_strings) for a in getattr(self, "_required_with_alias", [])
                   if getattr(namespace, a.dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return namespace, extras


def build_parser(prog: str, description: str, subcommands: Mapping[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in subcommands.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sp)
        sp.set_defaults(_module=module_name, _parser=sp)
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


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """argparse type for an integer in [low, high], e.g. an image side."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
        return value

    return parse


def _bounded_float(accept: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


probability = _bounded_float(lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")  # thresholds, IoUs
fraction = _bounded_float(lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")  # e.g. --padding-fraction
non_negative_float = _bounded_float(lambda v: v >= 0.0, "a non-negative number")  # seconds, tolerances
positive_float = _bounded_float(lambda v: v > 0.0, "a positive number")


def _dimensions(text: str, names: tuple[str, ...], minimums: tuple[int, ...], example: str) -> tuple[int, ...]:
    spelling = "x".join(n[0].upper() for n in names)
    parts = re.split(r"\s*[xX]\s*", text.strip())
    usage = f"{spelling} ({' x '.join(names)}, e.g. {example})"
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(f"expected {usage}, got {text!r}")
    if len(parts) != len(names):
        raise argparse.ArgumentTypeError(f"expected {len(names)} numbers {usage}, got {len(parts)} in {text!r}")
    values = tuple(int(p) for p in parts)
    if any(v < m for v, m in zip(values, minimums, strict=True)):
        least = ", ".join(f"{n} at least {m}" for n, m in zip(names, minimums, strict=True))
        raise argparse.ArgumentTypeError(f"expected {usage} with {least}, got {text!r}")
    return values


def hw_type(min_side: int = 1) -> Callable[[str], tuple[int, int]]:
    """argparse type for ``HxW`` (height x width), each side at least ``min_side``."""
    def parse(text: str) -> tuple[int, int]:
        height, width = _dimensions(text, ("height", "width"), (min_side, min_side), "800x1066")
        return height, width

    return parse


def bhw_type(min_side: int = 1) -> Callable[[str], tuple[int, int, int]]:
    """argparse type for ``BxHxW`` (batch x height x width), batch at least 1, each side at least ``min_side``."""
    def parse(text: str) -> tuple[int, int, int]:
        batch, height, width = _dimensions(text, ("batch", "height", "width"), (1, min_side, min_side), "1x800x1066")
        return batch, height, width

    return parse


parse_hw = hw_type()  # any positive height and width
parse_bhw = bhw_type()


def deprecation_note(prog: str, old: str, new: str) -> None:
    """The one line an old spelling prints on stderr (it keeps working for one release)."""
    print(f"{prog}: warning: {old} is deprecated and will be removed in the next release; use {new}",
          file=sys.stderr)


_ACTIONS: dict[str, type[argparse.Action]] = {
    "store": argparse._StoreAction, "store_true": argparse._StoreTrueAction,
    "store_false": argparse._StoreFalseAction, "extend": argparse._ExtendAction,
}


def add_deprecated(parser: argparse.ArgumentParser, old: str, new: str, action: str = "store",
                   **kwargs: Any) -> argparse.Action:
    """A hidden alias ``old`` for the spelling ``new``: it parses as before (into ``dest``, by default the new
    option's) and prints :func:`deprecation_note` when used. The help shows only the new spelling."""
    base = _ACTIONS[action]

    class Deprecated(base):  # type: ignore[valid-type, misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            deprecation_note(parser.prog, option_string or old, new)
            super().__call__(parser, namespace, values, option_string)

    long_option = re.search(r"--[\w-]+", new)
    if "dest" not in kwargs and long_option:
        kwargs["dest"] = long_option[0][2:].replace("-", "_")
    for target in parser._actions:  # a required option is satisfied by its alias too: ArgumentParser checks it
        if target.dest == kwargs.get("dest") and target.required and isinstance(parser, ArgumentParser):
            target.required = False
            target.help = f"{target.help} (required)" if target.help else "required"
            parser._required_with_alias = [*getattr(parser, "_required_with_alias", []), target]
    return parser.add_argument(old, action=Deprecated, help=argparse.SUPPRESS, **kwargs)


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
    parser = build_parser(prog, description, subcommands)
    args, extras = parser.parse_known_args(argv)
    module = importlib.import_module(args._module)
    subparser = vars(args).pop("_parser")
    # a list of positionals (infer's INPUT...) may continue after options: argparse leaves those words over
    more = getattr(module, "MORE_POSITIONALS", None)
    if more and extras and not any(e.startswith("-") for e in extras):
        setattr(args, more, [*getattr(args, more), *extras])
    elif extras:
        subparser.error(f"unrecognized arguments: {' '.join(extras)}")
    if hasattr(module, "finish_arguments"):
        module.finish_arguments(args, subparser)
    return report_errors(f"{prog} {args.command}", lambda: importlib.import_module(args._module).run(args))
