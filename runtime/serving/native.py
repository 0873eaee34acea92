"""The ``panseg`` model of the native repository: its graphs are other Triton models, reached through BLS.

``load_native_model`` builds the same ``PanopticModel`` that ``runtime.model.load_model`` builds from engine files,
from the graph descriptions the export wrote (``GRAPHS_FILE``) and one ``TritonBLSBackend`` per graph, with the same
metadata decoding and tensor checks (``parse_model_info``, ``check_engine``); decode, preprocess, query selection and
the panoptic merge are then the runtime's own code, and only the graph calls go through Triton.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from runtime.backends.triton_bls import GraphDescription, TritonBLSBackend
from runtime.errors import PansegError
from runtime.model import PanopticModel, check_engine
from runtime.model_info import parse_model_info
from runtime.serving.protocol import GRAPHS_FILE

ROLES = (("model",), ("detector", "masks"))  # a single graph; a query-sparse pair


def read_graph_descriptions(path: Path) -> dict[str, GraphDescription]:
    """Role -> description, from a ``GRAPHS_FILE``; a missing or malformed file is an error naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PansegError(f"{path}: cannot read the graph descriptions ({exc})") from exc
    if not isinstance(data, dict) or tuple(data) not in ROLES:
        raise PansegError(f"{path}: expected the roles {' or '.join('+'.join(r) for r in ROLES)}, "
                          f"got {list(data) if isinstance(data, dict) else type(data).__name__}")
    return {role: GraphDescription.from_json(entry, f"{path} ({role})") for role, entry in data.items()}


def load_native_model(version_dir: Path, pb_utils: Any) -> PanopticModel:
    """The panseg model whose graphs are served by the Triton models its ``GRAPHS_FILE`` names."""
    path = version_dir / GRAPHS_FILE
    graphs = read_graph_descriptions(path)
    stack = ExitStack()
    try:
        backends = {role: stack.enter_context(TritonBLSBackend(d, pb_utils)) for role, d in graphs.items()}
        detector = backends.get("detector") or backends["model"]
        masks = backends.get("masks")
        info = parse_model_info(detector.metadata(), f"{path} ({detector.path.name})")
        shape = check_engine(detector, info, masks)
    except BaseException:
        stack.close()
        raise
    return PanopticModel(detector.path, TritonBLSBackend.name, detector, masks, info, shape, stack)
