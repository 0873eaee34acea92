"""The native model repository (``python -m export.triton --engines native``): graph models for Triton's own
``onnxruntime_onnx`` / ``tensorrt_plan`` backends, called by the ``panseg`` model through BLS.

The configs are checked against the ONNX graphs read with ``onnx`` (not with the code that wrote them). The bundled
server has no onnxruntime backend, so the BLS path runs with Python-backend stand-ins (:func:`stand_in`): the same
config, inputs and outputs, with ``backend: "python"`` in place of the platform, running the same model.onnx with
onnxruntime. The native backends themselves never run here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.request
from pathlib import Path

import onnx
import pytest
import test_serving as shared

from export.triton import ModelConfig
from export.triton.__main__ import main as export_triton_main
from export.triton.native import GraphServing, engine_batch, graph_model_configs, render_graph_config
from export.triton.repository import ServingSettings, write_repository
from runtime.backends.triton_bls import GraphDescription
from runtime.cli import main as runtime_main
from runtime.errors import PansegError
from runtime.outputs import PANOPTIC_DIR, PREDICTIONS_FILE
from runtime.serving.client import PansegClient
from runtime.serving.native import read_graph_descriptions
from runtime.serving.protocol import GRAPHS_FILE, MODEL_NAME
from runtime.serving.server import TritonServer

# The Python-backend tests' module-scoped fixtures (exported tiny model, images, infer's answers, server install).
model, images, reference, install, work = shared.model, shared.images, shared.reference, shared.install, shared.work
SIZE, MAX_SIZE, THREADS = shared.SIZE, shared.MAX_SIZE, shared.THREADS
PROJECT = Path(__file__).resolve().parents[1]
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.BOOL: "TYPE_BOOL",
              onnx.TensorProto.INT64: "TYPE_INT64"}
TENSOR = re.compile(r'\{ name: "(?P<name>\w+)" data_type: (?P<type>\w+) dims: \[ (?P<dims>[-\d, ]*) \] \}')


def _section(text: str, key: str) -> list[tuple[str, str, tuple[int, ...]]]:
    body = text.split(f"{key} [\n", 1)[1].split("\n]", 1)[0]
    return [(m["name"], m["type"], tuple(int(d) for d in m["dims"].split(","))) for m in TENSOR.finditer(body)]


def _onnx_tensors(values, batched: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    """What the config must say about an ONNX graph's inputs or outputs: -1 for every symbolic dim."""
    found = []
    for v in values:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
        found.append((v.name, ONNX_TYPES[v.type.tensor_type.elem_type], dims[1:] if batched else dims))
    return found


@pytest.fixture(scope="module")
def native_repository(model, work, install) -> Path:
    settings = ServingSettings(size=SIZE, max_size=MAX_SIZE, threads=THREADS, engines="native",
                               config=ModelConfig(max_batch_size=4, execution_env=str(install.execution_env)))
    return write_repository(model, work / "native_repository", settings).repository


# --------------------------------------------------------------------------------------------- configs


def test_graph_configs_say_what_the_onnx_graphs_are(native_repository, model):
    masks_onnx = model.with_name("tiny.masks.onnx")
    for name, source, batched in (("panseg_detector", model, True), ("panseg_masks", masks_onnx, False)):
        text = (native_repository / name / "config.pbtxt").read_text()
        graph = onnx.load(str(source)).graph
        assert f'name: "{name}"' in text and 'platform: "onnxruntime_onnx"' in text
        assert f"max_batch_size: {4 if batched else 0}" in text
        assert _section(text, "input") == _onnx_tensors(graph.input, batched)
        assert _section(text, "output") == _onnx_tensors(graph.output, batched)
        assert "count: 1 kind: KIND_CPU" in text and "dynamic_batching" not in text
        assert "gpu_execution_accelerator" not in text  # CPU instances: no TensorRT provider
        assert 'key: "intra_op_thread_count" value: { string_value: "1" }' in text
        assert (native_repository / name / "1" / "model.onnx").read_bytes() == source.read_bytes()
    panseg = (native_repository / MODEL_NAME / "config.pbtxt").read_text()
    assert 'key: "engines" value: { string_value: "native" }' in panseg and "max_batch_size: 4" in panseg
    assert not (native_repository / MODEL_NAME / "1" / "engine").exists()
    graphs = read_graph_descriptions(native_repository / MODEL_NAME / "1" / GRAPHS_FILE)
    assert {role: g.model_name for role, g in graphs.items()} == {"detector": "panseg_detector",
                                                                  "masks": "panseg_masks"}


def test_gpu_instances_get_the_tensorrt_provider_with_profile_shapes_for_the_served_sizes(model, work):
    out = work / "native_gpu"
    assert export_triton_main([str(model), "-o", str(out), "--engines", "native", "--kind", "gpu", "--instances", "2",
                               "--size", "64", "--max-size", "96", "--max-batch-size", "2"]) == 0
    detector = (out / "panseg_detector" / "config.pbtxt").read_text()
    masks = (out / "panseg_masks" / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_GPU" in detector and "count: 2 kind: KIND_GPU" in masks
    assert "count: 2 kind: KIND_CPU" in (out / MODEL_NAME / "config.pbtxt").read_text()  # BLS caller: CPU work
    # Shorter side 64, longer side at most 96: sides from 96 / (21/9) = 41 to 96 + 2; batch up to 2.
    assert 'key: "trt_profile_min_shapes" value: "images:1x3x41x41,padding_mask:1x41x41"' in detector
    assert 'key: "trt_profile_max_shapes" value: "images:2x3x98x98,padding_mask:2x98x98"' in detector
    # The mask graph: up to 2 images x 10 queries kept, per-image tensors at strides 32 .. 4 of the largest image.
    assert '"trt_profile_max_shapes" value: "hs_kept:20x128,image_index:20,attn_keys:2x128x4x4,' in masks
    assert "fpn_s4:2x16x25x25" in masks
    readme = (out / "README.md").read_text()
    assert "`panseg_detector`: platform `onnxruntime_onnx`" in readme and "**Not run by panseg's tests:**" in readme


def _descriptions(native_repository: Path) -> dict[str, GraphDescription]:
    return read_graph_descriptions(native_repository / MODEL_NAME / "1" / GRAPHS_FILE)


def test_a_bad_graph_description_file_is_named_with_its_problem(native_repository, work):
    bad = work / "graphs-bad.json"
    bad.write_text(json.dumps({"detector": {"model_name": "panseg_detector"}, "masks": {}}))
    with pytest.raises(PansegError, match=rf"{re.escape(str(bad))} \(detector\): not a graph description \(KeyError"):
        read_graph_descriptions(bad)
    bad.write_text(json.dumps({"masks": {}}))
    with pytest.raises(PansegError, match=r"expected the roles model or detector\+masks, got \['masks'\]"):
        read_graph_descriptions(bad)
    bad.write_text("{")
    with pytest.raises(PansegError, match="cannot read the graph descriptions"):
        read_graph_descriptions(bad)


def test_a_plan_is_a_tensorrt_plan_model_on_gpus_batched_up_to_its_profile(native_repository):
    plans = {role: dataclasses.replace(g, file=g.file.replace(".onnx", ".plan"))
             for role, g in _descriptions(native_repository).items()}
    configs, batch = graph_model_configs(plans, GraphServing(max_batch_size=8, kind="gpu", profile_max_batch=2))
    assert batch == 2 and configs["detector"].max_batch_size == 2 and configs["masks"].max_batch_size == 0
    text = render_graph_config(configs["detector"])
    assert 'platform: "tensorrt_plan"' in text and "execution_accelerators" not in text
    assert configs["masks"].model_file == "model.plan"
    with pytest.raises(PansegError, match="tiny.plan: a TensorRT plan runs on a GPU only; give --kind gpu"):
        graph_model_configs(plans, GraphServing(kind="cpu"))


def test_without_a_longest_side_the_tensorrt_provider_gets_no_profile_and_a_warning_says_so(native_repository):
    graphs = _descriptions(native_repository)
    with pytest.warns(RuntimeWarning, match="unbounded.*the graph models get no TensorRT profile shapes"):
        configs, _ = graph_model_configs(graphs, GraphServing(kind="gpu", size=64, max_size="none"))
    assert configs["detector"].tensorrt_accelerator == {} and configs["masks"].tensorrt_accelerator == {}
    assert 'name: "tensorrt"\n  } ]' in render_graph_config(configs["masks"])


def test_a_fixed_batch_axis_is_not_batched_the_triton_way(native_repository):
    detector = _descriptions(native_repository)["detector"]
    fixed = dataclasses.replace(detector, inputs=tuple(dataclasses.replace(s, shape=(1, *s.shape[1:]))
                                                       for s in detector.inputs))
    assert engine_batch(fixed, 8, None) == (0, 1)
    assert engine_batch(detector, 8, None) == (8, 8)
    configs, _ = graph_model_configs({"model": fixed}, GraphServing())
    assert '{ name: "images" data_type: TYPE_FP32 dims: [ 1, 3, -1, -1 ] }' in render_graph_config(configs["model"])


def test_the_bundled_server_refuses_a_native_repository_naming_the_missing_backend(model, work, install):
    repository = write_repository(model, work / "native_unservable", ServingSettings(engines="native")).repository
    with pytest.raises(PansegError) as raised:
        TritonServer(repository, install).start()
    assert f"{repository}: panseg_detector needs the onnxruntime backend, panseg_masks needs the onnxruntime " \
           f"backend, which {install.backends} lacks" in str(raised.value)


# --------------------------------------------------------------------------------------------- BLS, for real

STAND_IN_MODEL = '''"""Test stand-in for Triton's onnxruntime backend: the same model.onnx, run by panseg's ONNX Runtime
backend."""

import json
import sys
from pathlib import Path

sys.path.insert(0, {project!r})

import triton_python_backend_utils as pb  # noqa: E402

from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = config["parameters"]["intra_op_thread_count"]["string_value"]
        self.inputs = [t["name"] for t in config["input"]]
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.engine = OnnxRuntimeBackend(model, intra_op_threads=int(threads))

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {{n: pb.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}}
            outputs = self.engine.infer(feeds, list(request.requested_output_names()))
            responses.append(pb.InferenceResponse([pb.Tensor(n, v) for n, v in outputs.items()]))
        return responses
'''


def stand_in(repository: Path, name: str, execution_env: Path) -> None:
    """Turn graph model ``name`` into a Python-backend model with the same config inputs and outputs."""
    config = repository / name / "config.pbtxt"
    text = config.read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    text = text.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    text += f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{execution_env}" }} }}\n'
    config.write_text(text)
    (repository / name / "1" / "model.py").write_text(STAND_IN_MODEL.format(project=str(PROJECT)))


@pytest.fixture(scope="module")
def native_server(native_repository, install, work):
    for name in ("panseg_detector", "panseg_masks"):
        stand_in(native_repository, name, install.execution_env)
    # No watchdog: a test unloads a graph model on purpose, and the watchdog would take its stub's end for a crash.
    with TritonServer(native_repository, install, log_path=work / "server-native.log", watchdog=False) as running:
        yield running


@pytest.mark.serving
def test_bls_answers_are_byte_identical_to_infer(native_server, images, reference, work):
    out = work / "requested_native"
    assert runtime_main(["request", native_server.url, *map(str, images), "-o", str(out), "--concurrency", "4"]) == 0
    for path in images:
        name = f"{path.stem}.png"
        assert (out / PANOPTIC_DIR / name).read_bytes() == (reference / PANOPTIC_DIR / name).read_bytes()
    assert (out / PREDICTIONS_FILE).read_bytes() == (reference / PREDICTIONS_FILE).read_bytes()
    executed = _metric(native_server, "nv_inference_exec_count", "panseg_masks")
    assert executed >= 1  # the masks really came from the graph model


def _metric(server: TritonServer, name: str, model_name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(f"{name}{{") and f'model="{model_name}"' in line)


@pytest.mark.serving
def test_a_graph_model_failing_is_that_requests_error_and_serving_goes_on(native_server, images, reference):
    good = images[0].read_bytes()
    expected = shared._reference_answers(reference, images[:1])[good]
    native_server._post("/v2/repository/models/panseg_masks/unload")
    try:
        with PansegClient(native_server.url) as client, pytest.raises(Exception) as raised:  # noqa: B017
            client.segment(good)
        text = str(raised.value)
        # This request's own error (not a failed model execution), naming the graph model and what Triton said.
        assert "Failed to process the request(s)" not in text
        assert "Triton model panseg_masks (tiny.masks.onnx): " in text and "'panseg_masks' is not ready" in text
    finally:
        native_server._post("/v2/repository/models/panseg_masks/load")
    with PansegClient(native_server.url) as client:
        answer = client.segment(good)
    assert (answer.png, answer.segments_info) == expected
