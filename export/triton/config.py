"""The ``panseg`` model's config.pbtxt, as text (Triton's protobuf text format).

Why written by hand and not with protobuf: the project does not depend on Triton's protos, and the config is small;
``pbtxt_string`` quotes values (the categories JSON) the way protobuf's text format reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.serving.protocol import (
    EXECUTION_ENV_PATH,
    IMAGE,
    MODEL_NAME,
    NMS_IOU,
    PANOPTIC_PNG,
    SEGMENTS_INFO,
    THRESHOLD,
)

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass
class ModelConfig:
    """What the config says about serving: batching, instances, versions, and the model's string parameters."""

    max_batch_size: int = 8
    dynamic_batching: bool = True
    # Triton's own default. A delay makes a lone request wait for company (1000 us: +1 ms queueing per request at
    # concurrency 1, the demo model); with the instances busy, requests queue anyway and the batcher joins them
    # (no delay, concurrency 4: 1.4 requests per execution with two instances, 2.1 with one).
    queue_delay_us: int = 0
    instances: int = 1
    kind: str = "cpu"
    keep_versions: int = 1
    execution_env: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)


def pbtxt_string(text: str) -> str:
    """A double-quoted protobuf text-format string (UTF-8 kept as is; backslash, quote and newlines escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _parameter(key: str, value: str) -> str:
    return f"  {{ key: {pbtxt_string(key)} value: {{ string_value: {pbtxt_string(value)} }} }}"


def instance_group(count: int, kind: str) -> str:
    return f"instance_group [ {{ count: {count} kind: {INSTANCE_KINDS[kind]} }} ]"


def version_policy(keep_versions: int) -> str:
    return f"version_policy: {{ latest: {{ num_versions: {keep_versions} }} }}"


def render_config(config: ModelConfig) -> str:
    """config.pbtxt of the ``panseg`` Python-backend model."""
    if config.kind not in INSTANCE_KINDS:
        raise ValueError(f"instance kind must be one of {sorted(INSTANCE_KINDS)}, got {config.kind!r}")
    parameters = dict(config.parameters)
    if config.execution_env:
        parameters[EXECUTION_ENV_PATH] = config.execution_env
    lines = [
        f"name: {pbtxt_string(MODEL_NAME)}",
        'backend: "python"',
        f"max_batch_size: {config.max_batch_size}",
        "input [",
        f"  {{ name: {pbtxt_string(IMAGE)} data_type: TYPE_STRING dims: [ 1 ] }},",
        f"  {{ name: {pbtxt_string(THRESHOLD)} data_type: TYPE_FP32 dims: [ 1 ] optional: true }},",
        f"  {{ name: {pbtxt_string(NMS_IOU)} data_type: TYPE_FP32 dims: [ 1 ] optional: true }}",
        "]",
        "output [",
        f"  {{ name: {pbtxt_string(PANOPTIC_PNG)} data_type: TYPE_STRING dims: [ 1 ] }},",
        f"  {{ name: {pbtxt_string(SEGMENTS_INFO)} data_type: TYPE_STRING dims: [ 1 ] }}",
        "]",
        instance_group(config.instances, config.kind),
        version_policy(config.keep_versions),
    ]
    if config.dynamic_batching and config.max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {config.queue_delay_us} }}")
    if parameters:
        lines += ["parameters [", ",\n".join(_parameter(k, v) for k, v in parameters.items()), "]"]
    return "\n".join(lines) + "\n"
