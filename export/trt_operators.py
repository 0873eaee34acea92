"""Which ONNX operators TensorRT can parse, and a check that an exported graph uses only those.

The operator table is data (export/data/tensorrt_onnx_operators.json, transcribed from onnx-tensorrt's
docs/operators.md for one TensorRT release) so an export can be checked on a machine with no GPU and no TensorRT,
long before an engine build would fail, and so that moving to a new TensorRT release is a data update.
Only operator *names* and the opset range are checked: the per-operator restrictions (e.g. "`axes` must be an
initializer") are kept in the table for error messages and humans, but are not verified here.

The table is one TensorRT release's (its ``tensorrt_version``), which need not be the TensorRT installed: messages
name the release the table was taken from, and the installed one when it differs (read from package metadata, without
importing TensorRT), so they never claim a check against a version that was not consulted.

Where TensorRT is installed, it is the authority: :func:`check_before_build` (the engine builder's planning step) turns
the table's doubts into a warning when the installed release is another one, and the build itself asks the installed
parser about every operator type (:func:`parser_unsupported_nodes`, called from export/tensorrt/build.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from runtime.errors import PansegError

TABLE_RESOURCE = "data/tensorrt_onnx_operators.json"
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})  # both spell the standard ONNX operator set
MAX_LISTED = 20  # offending nodes named in one error message; the rest are counted

# The wheels that install the ``tensorrt`` module (the meta package and its CUDA-specific builds).
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")

# (qualified node name, op type, domain) of a node TensorRT cannot parse.
OffendingNode = tuple[str, str, str]


@dataclass(frozen=True)
class OperatorTable:
    """TensorRT's ONNX operator support for one TensorRT release."""

    tensorrt_version: str
    source: str
    opset_range: tuple[int, int]
    supported: Mapping[str, str]  # op type -> restrictions text ("" when there are none)
    unsupported: frozenset[str]  # listed as "N" in the support matrix
    supported_types: Mapping[str, str] = field(default_factory=dict)

    def is_supported(self, op_type: str) -> bool:
        """True for an op of the default ONNX domain that TensorRT parses; ops missing from the table are not."""
        return op_type in self.supported

    def opset_supported(self, version: int) -> bool:
        low, high = self.opset_range
        return low <= version <= high


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_tensorrt_version(version_of: Callable[[str], str | None] = _installed_version) -> str | None:
    """The installed TensorRT wheel's version, or None (package metadata only: nothing is imported)."""
    return next((v for d in TENSORRT_DISTRIBUTIONS if (v := version_of(d)) is not None), None)


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def releases_differ(table: OperatorTable, installed: str | None) -> bool:
    """True when a TensorRT is installed and its major.minor is not the table's (10.15.1.29 is the 10.15 table's)."""
    return installed is not None and _major_minor(installed) != _major_minor(table.tensorrt_version)


def table_provenance(table: OperatorTable, installed: str | None) -> str:
    """Which release the verdict comes from: ``TensorRT 10.15's operator table`` plus the installed release when
    it is another one."""
    text = f"TensorRT {table.tensorrt_version}'s operator table"
    if not releases_differ(table, installed):
        return text
    return f"{text}; TensorRT {installed} is installed and its ONNX parser may accept more or less"


def _table_from_json(data: Any, source: str) -> OperatorTable:
    if not isinstance(data, dict):
        raise PansegError(f"{source}: expected a JSON object")
    missing = [k for k in ("tensorrt_version", "opset_range", "supported", "unsupported") if k not in data]
    if missing:
        raise PansegError(f"{source}: missing key(s) {', '.join(missing)}")
    opset = data["opset_range"]
    if not (isinstance(opset, list) and len(opset) == 2 and all(isinstance(v, int) for v in opset)
            and opset[0] <= opset[1]):
        raise PansegError(f"{source}: opset_range must be [min, max] integers, got {opset!r}")
    supported = data["supported"]
    if not (isinstance(supported, dict) and all(isinstance(v, str) for v in supported.values())):
        raise PansegError(f"{source}: 'supported' must map op types to restriction strings")
    unsupported = data["unsupported"]
    if not (isinstance(unsupported, list) and all(isinstance(v, str) for v in unsupported)):
        raise PansegError(f"{source}: 'unsupported' must be a list of op types")
    both = sorted(set(supported) & set(unsupported))
    if both:
        raise PansegError(f"{source}: op(s) listed as both supported and unsupported: {', '.join(both)}")
    return OperatorTable(
        tensorrt_version=str(data["tensorrt_version"]),
        source=str(data.get("source", source)),
        opset_range=(opset[0], opset[1]),
        supported=MappingProxyType(dict(supported)),
        unsupported=frozenset(unsupported),
        supported_types=MappingProxyType(dict(data.get("supported_types", {}))),
    )


@lru_cache(maxsize=1)
def _shipped_table() -> OperatorTable:
    resource = files("export").joinpath(TABLE_RESOURCE)
    source = f"export/{TABLE_RESOURCE}"
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PansegError(f"{source}: cannot read the TensorRT operator table ({exc})") from exc
    return _table_from_json(data, source)


def load_supported_operators(path: str | os.PathLike | None = None) -> OperatorTable:
    """The shipped TensorRT operator table, or one read from ``path`` (same JSON layout)."""
    if path is None:
        return _shipped_table()
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: no such file") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PansegError(f"{path}: not a readable JSON operator table ({exc})") from exc
    return _table_from_json(data, str(path))


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute label, graph) for the bodies of control-flow nodes (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, graph in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", graph


def _walk(nodes: Iterable[onnx.NodeProto], prefix: str) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node with a name qualified by where it sits, descending into subgraphs."""
    for index, node in enumerate(nodes):
        qualified = prefix + (node.name or f"<unnamed {node.op_type} #{index}>")
        yield qualified, node
        for label, graph in _subgraphs(node):
            yield from _walk(graph.node, f"{qualified}/{label}/")


def _reachable_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto, bool]]:
    """(qualified name, node, calls_local_function) for the main graph and every local function it (transitively)
    calls; functions nobody calls are skipped, since TensorRT never parses them."""
    functions = {(f.domain, f.name): f for f in model.functions}
    pending = [("", list(model.graph.node))]
    seen: set[tuple[str, str]] = set()
    while pending:
        prefix, nodes = pending.pop()
        for qualified, node in _walk(nodes, prefix):
            key = (node.domain, node.op_type)
            is_call = key in functions
            yield qualified, node, is_call
            if is_call and key not in seen:
                seen.add(key)
                function = functions[key]
                pending.append((f"{function.domain}.{function.name}/", list(function.node)))


def unsupported_nodes(model: onnx.ModelProto, table: OperatorTable | None = None) -> list[OffendingNode]:
    """Nodes TensorRT cannot parse: default-domain ops not in the supported table, and custom-domain ops
    (TensorRT would need a plugin for them). Looks inside subgraphs and the local functions the model calls;
    a call to a local function is itself fine (TensorRT inlines it), its body is what gets checked."""
    table = table or load_supported_operators()
    offending = []
    for qualified, node, is_call in _reachable_nodes(model):
        if is_call:
            continue
        if node.domain in DEFAULT_DOMAINS:
            if not table.is_supported(node.op_type):
                offending.append((qualified, node.op_type, node.domain))
        else:
            offending.append((qualified, node.op_type, node.domain))
    return offending


def parser_unsupported_nodes(model: onnx.ModelProto, supports: Callable[[str], bool]) -> list[OffendingNode]:
    """The default-domain nodes whose op type ``supports`` (an installed TensorRT parser's ``supports_operator``)
    refuses; it is asked once per distinct op type. Same walk as :func:`unsupported_nodes` (subgraphs, and the
    bodies of the local functions the model calls); custom-domain nodes are left to the parse."""
    verdicts: dict[str, bool] = {}
    offending = []
    for qualified, node, is_call in _reachable_nodes(model):
        if is_call or node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type not in verdicts:
            verdicts[node.op_type] = bool(supports(node.op_type))
        if not verdicts[node.op_type]:
            offending.append((qualified, node.op_type, node.domain))
    return offending


def list_nodes(nodes: list[OffendingNode], describe: Callable[[OffendingNode], str]) -> str:
    """``'a' (Op), 'b' (Op)``, the first MAX_LISTED of them, and how many more."""
    listed = ", ".join(describe(node) for node in nodes[:MAX_LISTED])
    return listed + (f" and {len(nodes) - MAX_LISTED} more" if len(nodes) > MAX_LISTED else "")


def opset_problems(model: onnx.ModelProto, table: OperatorTable | None = None) -> list[str]:
    """Default-domain opset imports (of the model and of its local functions) outside TensorRT's range."""
    table = table or load_supported_operators()
    low, high = table.opset_range
    problems = []
    owners = [("model", model.opset_import)] + [(f"function {f.domain}.{f.name}", f.opset_import)
                                               for f in model.functions]
    for owner, imports in owners:
        for entry in imports:
            if entry.domain in DEFAULT_DOMAINS and not table.opset_supported(entry.version):
                problems.append(f"{owner} uses opset {entry.version}, outside TensorRT {table.tensorrt_version} "
                                f"operator table's "
                                f"range {low}-{high}")
    if not any(e.domain in DEFAULT_DOMAINS for e in model.opset_import) and len(model.graph.node):
        problems.append("model declares no default-domain opset")
    return problems


def _describe(node: OffendingNode, table: OperatorTable) -> str:
    name, op_type, domain = node
    if domain not in DEFAULT_DOMAINS:
        return f"'{name}' ({domain}::{op_type}, custom domain)"
    reason = "unsupported" if op_type in table.unsupported else "not in TensorRT's operator table"
    return f"'{name}' ({op_type}, {reason})"


def _load_model(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        # Only the graph matters here: leave large external weights on disk.
        return onnx.load(os.fspath(path), load_external_data=False)
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: no such file") from exc
    except (OSError, DecodeError, ValueError) as exc:
        raise PansegError(f"{path}: not a readable ONNX model ({exc})") from exc


def load_graph(model_or_path: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """The model (graph only, external weights left on disk) and how messages name it."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, f"model '{model_or_path.graph.name or '<unnamed>'}'"
    return _load_model(model_or_path), os.fspath(model_or_path)


def check_tensorrt_compatible(model_or_path: onnx.ModelProto | str | os.PathLike,
                              table: OperatorTable | None = None,
                              installed: Callable[[], str | None] = installed_tensorrt_version) -> None:
    """Raise PansegError (one line, naming every offending node and op type) unless TensorRT can parse the model."""
    table = table or load_supported_operators()
    model, source = load_graph(model_or_path)
    problems = opset_problems(model, table)
    offending = unsupported_nodes(model, table)
    if offending:
        described = list_nodes(offending, lambda node: _describe(node, table))
        problems.append(f"{len(offending)} node(s) TensorRT cannot parse: {described}")
    if problems:
        raise PansegError(f"{source}: TensorRT's ONNX parser would refuse it ({table_provenance(table, installed())}):"
                          f" {'; '.join(problems)}")


def check_before_build(model_or_path: onnx.ModelProto | str | os.PathLike, table: OperatorTable | None = None,
                       installed: Callable[[], str | None] | None = None) -> str | None:
    """The engine builder's operator check: the installed TensorRT is the authority wherever there is one.

    With no TensorRT installed (a --dry-run machine), or one of the table's own release, this is
    :func:`check_tensorrt_compatible` (raises on anything the table refuses). With another release installed, the
    table's doubts (default-domain ops it lacks or marks unsupported, opsets outside its range) do not block: they
    come back as a one-line warning (None when there are none), and the build asks the installed parser itself
    (export/tensorrt/build.py). Custom-domain nodes are refused either way: every release needs a plugin for them.
    ``installed`` defaults to :func:`installed_tensorrt_version` (package metadata; nothing is imported).
    """
    table = table or load_supported_operators()
    version = (installed or installed_tensorrt_version)()
    if not releases_differ(table, version):
        check_tensorrt_compatible(model_or_path, table, installed=lambda: version)
        return None
    model, source = load_graph(model_or_path)
    offending = unsupported_nodes(model, table)
    custom = [node for node in offending if node[2] not in DEFAULT_DOMAINS]
    if custom:
        raise PansegError(f"{source}: TensorRT's ONNX parser would refuse it: {len(custom)} node(s) of a custom "
                          f"domain, which any TensorRT release parses only through a plugin: "
                          f"{list_nodes(custom, lambda node: _describe(node, table))}")
    doubts = opset_problems(model, table)
    if offending:
        doubts.append(f"{len(offending)} node(s): {list_nodes(offending, lambda node: _describe(node, table))}")
    if not doubts:
        return None
    return (f"{source}: TensorRT {table.tensorrt_version}'s operator table doubts it ({'; '.join(doubts)}); "
            f"TensorRT {version} is installed, so its ONNX parser decides when the engine is built")
