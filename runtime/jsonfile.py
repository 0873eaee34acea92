"""Reading a JSON file with errors that name the file (missing, not JSON), as every loader here needs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.errors import PansegError


def read_json(path: str | os.PathLike, error: type[PansegError] = PansegError) -> Any:
    """Parse ``path``; a missing file or invalid JSON raises ``error`` with a one-line message naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise error(f"{path}: is a directory, not a JSON file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
