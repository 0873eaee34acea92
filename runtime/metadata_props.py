"""Decoding model metadata: the export stores every ``metadata_props`` value JSON-encoded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runtime.errors import PansegError


def decode_metadata_props(entries: Iterable[tuple[str, str]], source: str) -> dict[str, Any]:
    """(key, JSON string) pairs -> {key: value}; a value that is not JSON is an error naming ``source`` and the key."""
    out: dict[str, Any] = {}
    for key, value in entries:
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PansegError(f"{source}: metadata {key!r} is not JSON ({exc})") from exc
    return out
