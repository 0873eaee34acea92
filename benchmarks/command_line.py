"""Commands as the demo prints them and generated reports record them: copyable from the repository root and free of
the path of the checkout that ran them (summaries and reports are committed, so machine paths would leak and go
stale). The commands themselves run with the real paths; only what is shown is rewritten.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def repo_relative(arg: str, root: Path = REPO) -> str:
    """``arg`` relative to ``root`` when it is an absolute path inside it (``root`` itself becomes ``.``), else as
    given: relative paths and option values are left alone."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    for base in dict.fromkeys((root, root.resolve())):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix() or "."
    return arg


def python_name(root: Path = REPO) -> str:
    """How to write this interpreter in a copyable command: ``python`` if that is what PATH finds, its path relative to
    the repository when it lives there (``.venv/bin/python``, what ``make demo`` runs), else its full path."""
    found = shutil.which("python")
    if found and Path(found).absolute() == Path(sys.executable).absolute():
        return "python"
    return repo_relative(str(Path(sys.executable).absolute()), root)


def shell_line(argv: Sequence[str], python: str | None = None, root: Path = REPO) -> str:
    """``argv`` as one shell line: this interpreter written as ``python`` (default: :func:`python_name`), absolute
    paths inside ``root`` relative to it."""
    python = python_name(root) if python is None else python
    return shlex.join([python if k == 0 and arg == sys.executable else repo_relative(arg, root)
                       for k, arg in enumerate(argv)])
