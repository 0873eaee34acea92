"""Where derived files (optimized graphs, TensorRT engine caches) live: a per-user cache, never beside the model.

A model's folder may be read-only, shared between users or under version control, so nothing is written there.
The root is ``$PANSEG_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/panseg``, else ``~/.cache/panseg``. Each model gets
its own folder, named by its file name and a digest of its absolute path, so two models never share one; what goes
inside is keyed by the model's contents by its user (a re-exported model at the same path is a new entry).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

CACHE_ENV = "PANSEG_CACHE_DIR"
_PATH_DIGEST_CHARS = 16


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The user's panseg cache folder (not created here)."""
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "panseg"


def model_cache_dir(kind: str, model_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<kind>/<model file name>-<digest of its absolute path>``: one folder per model file and cache kind."""
    path = Path(model_path).resolve()
    digest = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:_PATH_DIGEST_CHARS]
    return Path(root if root is not None else cache_root()) / kind / f"{path.name}-{digest}"
