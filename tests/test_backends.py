"""Engine backends: ONNX Runtime behind the Backend interface, its optimized-graph cache, and backend selection."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from runtime.backends import (
    OnnxRuntimeBackend,
    add_backend_arguments,
    backend_options_from_args,
    select_backend,
)
from runtime.backends.onnxruntime_backend import cache_dir_for, check_single_onnxruntime
from runtime.cache_dir import CACHE_ENV, cache_root, model_cache_dir
from runtime.errors import PansegError
from runtime.trt_sidecar import read_sidecar_metadata

METADATA = {
    "categories": json.dumps([{"id": 1, "name": "sky", "isthing": 0, "color": [70, 130, 180]}]),
    "threshold": "0.85",
    "normalization": json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
}


def write_model(path: Path, scale: float = 2.0, offset: float = 1.0, metadata: dict | None = None) -> Path:
    """Y = X * scale + offset and A = argmax(X, axis=1), with a symbolic batch dim."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    a = helper.make_tensor_value_info("A", TensorProto.INT64, ["batch"])
    nodes = [
        helper.make_node("Mul", ["X", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["Y"]),
        helper.make_node("ArgMax", ["X"], ["A"], axis=1, keepdims=0),
    ]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])]
    model = helper.make_model(helper.make_graph(nodes, "affine", [x], [y, a], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, metadata if metadata is not None else METADATA)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch) -> Path:
    """Caches go to a temporary folder, never to the real ~/.cache of whoever runs the tests."""
    root = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def model_path(tmp_path) -> Path:
    return write_model(tmp_path / "model.onnx")


def cache_files(model: Path) -> list[Path]:
    return sorted(cache_dir_for(model).glob("*.onnx"))


def test_infer_matches_numpy_for_any_batch(model_path):
    rng = np.random.default_rng(0)
    with OnnxRuntimeBackend(model_path) as backend:
        for batch in (1, 4):
            x = rng.standard_normal((batch, 3)).astype(np.float32)
            out = backend.infer({"X": x})
            assert set(out) == {"Y", "A"}
            np.testing.assert_allclose(out["Y"], x * 2 + 1, rtol=1e-6)
            np.testing.assert_array_equal(out["A"], np.argmax(x, axis=1))
        only = backend.infer({"X": x}, outputs=["A"])
        assert list(only) == ["A"]


def test_specs_report_names_dtypes_and_symbolic_dims(model_path):
    with OnnxRuntimeBackend(model_path) as backend:
        (inp,) = backend.input_specs()
        assert (inp.name, inp.dtype, inp.shape) == ("X", np.dtype(np.float32), ("batch", 3))
        outs = {s.name: s for s in backend.output_specs()}
        assert outs["Y"].dtype == np.float32 and outs["Y"].shape == ("batch", 3)
        assert outs["A"].dtype == np.int64 and outs["A"].shape == ("batch",)


def test_metadata_round_trips_also_through_the_cache(model_path):
    first = OnnxRuntimeBackend(model_path)
    second = OnnxRuntimeBackend(model_path)
    assert not first.cache_hit and second.cache_hit
    for backend in (first, second):
        assert backend.metadata() == METADATA
        assert json.loads(backend.metadata()["normalization"])["std"] == [0.229, 0.224, 0.225]
        backend.close()


def test_cache_is_created_then_reused(model_path):
    first = OnnxRuntimeBackend(model_path)
    (cached,) = cache_files(model_path)
    assert first.cache_path == cached and not first.cache_hit
    stamp, content = cached.stat().st_mtime_ns, cached.read_bytes()
    onnx.load(cached)  # a real ONNX model, not a placeholder
    second = OnnxRuntimeBackend(model_path)
    assert second.cache_hit and second.cache_path == cached
    assert cached.stat().st_mtime_ns == stamp and cached.read_bytes() == content
    assert cache_files(model_path) == [cached]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(second.infer({"X": x})["Y"], x * 2 + 1)
    assert not list(model_path.parent.glob("**/*.tmp"))


def test_changed_source_model_invalidates_the_cache(model_path):
    old = OnnxRuntimeBackend(model_path).cache_path
    write_model(model_path, scale=3.0)  # same name, different graph
    backend = OnnxRuntimeBackend(model_path)
    assert not backend.cache_hit and backend.cache_path != old
    assert cache_files(model_path) == [backend.cache_path]  # the stale graph was pruned
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(backend.infer({"X": x})["Y"], x * 3 + 1)  # not the stale cached graph


def test_cache_lives_in_the_user_cache_not_beside_the_model(model_path, user_cache):
    backend = OnnxRuntimeBackend(model_path)
    assert backend.cache_path.is_relative_to(user_cache / "ort")
    assert backend.cache_dir.name.startswith("model.onnx-")
    assert list(model_path.parent.iterdir()) == [model_path]  # the model's folder may be read-only or shared
    assert OnnxRuntimeBackend(model_path).cache_hit


def test_a_backend_option_overrides_the_cache_root(model_path, tmp_path_factory, user_cache):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    backend = OnnxRuntimeBackend(model_path, cache_root=elsewhere)
    assert backend.cache_path.is_relative_to(elsewhere / "ort") and not list(user_cache.iterdir())
    assert OnnxRuntimeBackend(model_path, cache_root=elsewhere).cache_hit


def test_models_of_the_same_name_in_other_folders_never_share_a_cache(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first = write_model(tmp_path / "a" / "model.onnx", scale=2.0)
    second = write_model(tmp_path / "b" / "model.onnx", scale=5.0)
    twin = tmp_path / "c.onnx"
    twin.write_bytes(first.read_bytes())  # same contents, another path
    backends = [OnnxRuntimeBackend(p) for p in (first, second, twin)]
    assert len({b.cache_dir for b in backends}) == 3
    again = [OnnxRuntimeBackend(p) for p in (first, second, twin)]  # nobody pruned anybody's graph
    assert all(b.cache_hit for b in again)
    x = np.ones((1, 3), np.float32)
    assert [float(b.infer({"X": x})["Y"][0, 0]) for b in again] == [3.0, 6.0, 3.0]


def test_tensorrt_cache_folder_is_keyed_by_the_model_contents(model_path):
    old = OnnxRuntimeBackend(model_path).tensorrt_cache_dir
    assert old.parent == cache_dir_for(model_path)
    old.mkdir()  # as the TensorRT provider would leave it (no GPU here to build real engines)
    (old / "engine").write_bytes(b"stale")
    write_model(model_path, scale=3.0)  # re-exported to the same path
    backend = OnnxRuntimeBackend(model_path)
    assert backend.tensorrt_cache_dir != old and backend.tensorrt_cache_dir.parent == old.parent
    assert not old.exists()  # the stale engines were pruned with the stale graph


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    assert cache_root({}) == tmp_path / "home" / ".cache" / "panseg"
    assert cache_root({"XDG_CACHE_HOME": "/srv/cache"}) == Path("/srv/cache/panseg")
    assert cache_root({"XDG_CACHE_HOME": "relative/cache"}) == tmp_path / "home" / ".cache" / "panseg"  # XDG: ignored
    assert cache_root({"XDG_CACHE_HOME": "/srv/cache", CACHE_ENV: "/scratch/panseg"}) == Path("/scratch/panseg")
    folder = model_cache_dir("ort", tmp_path / "m.onnx", root="/r")
    assert folder.parent == Path("/r/ort") and folder.name.startswith("m.onnx-")


def test_cache_key_depends_on_ort_version(model_path, monkeypatch):
    first = OnnxRuntimeBackend(model_path).cache_path
    monkeypatch.setattr(ort, "__version__", ort.__version__ + ".post-test")
    assert OnnxRuntimeBackend(model_path).cache_path != first


def test_corrupt_cache_falls_back_to_the_source_and_is_rebuilt(model_path):
    cached = OnnxRuntimeBackend(model_path).cache_path
    cached.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.warns(RuntimeWarning, match="optimized-model cache"):
        backend = OnnxRuntimeBackend(model_path)
    assert not backend.cache_hit
    x = np.full((2, 3), 5, np.float32)
    np.testing.assert_allclose(backend.infer({"X": x})["Y"], x * 2 + 1)
    onnx.load(cached)  # rebuilt as a valid model
    assert OnnxRuntimeBackend(model_path).cache_hit


def test_cache_can_be_turned_off(model_path):
    backend = OnnxRuntimeBackend(model_path, optimized_cache=False)
    assert backend.cache_path is None and not cache_dir_for(model_path).exists()
    assert list(model_path.parent.iterdir()) == [model_path]
    assert backend.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_thread_options_are_applied(model_path):
    backend = OnnxRuntimeBackend(model_path, intra_op_threads=1, inter_op_threads=2)
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    default = OnnxRuntimeBackend(model_path).session.get_session_options()
    assert default.intra_op_num_threads == 0 and default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_spinning_is_on_by_default_and_can_be_turned_off_also_through_the_cache(model_path):
    def spinning(backend):
        options = backend.session.get_session_options()
        found = {}
        for k in ("intra_op", "inter_op"):
            try:
                found[k] = options.get_session_config_entry(f"session.{k}.allow_spinning")
            except Exception:  # ORT raises when the entry was never set: its default (spinning) applies
                found[k] = "default"
        return found

    assert spinning(OnnxRuntimeBackend(model_path)) == {"intra_op": "default", "inter_op": "default"}
    quiet = OnnxRuntimeBackend(model_path, allow_spinning=False)
    assert spinning(quiet) == {"intra_op": "0", "inter_op": "0"}
    again = OnnxRuntimeBackend(model_path, allow_spinning=False)  # loaded from the optimized cache this time
    assert again.cache_hit and spinning(again) == {"intra_op": "0", "inter_op": "0"}


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_missing_provider_is_an_error_naming_it(model_path):
    with pytest.raises(PansegError) as info:
        OnnxRuntimeBackend(model_path, providers=("cuda",))
    message = str(info.value)
    assert "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message  # what was asked, what exists
    assert "\n" not in message


def test_missing_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(PansegError, match="nope.onnx: no such model file"):
        OnnxRuntimeBackend(missing)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_is_an_error_naming_it(model_path, damage):
    data = model_path.read_bytes()
    model_path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(PansegError) as info:
        OnnxRuntimeBackend(model_path)
    assert str(model_path) in str(info.value) and "\n" not in str(info.value)
    assert not cache_dir_for(model_path).exists()  # nothing left behind


def test_bad_feeds_are_clear_errors(model_path):
    with OnnxRuntimeBackend(model_path) as backend:
        with pytest.raises(PansegError, match="input X must be float32, got float64"):
            backend.infer({"X": np.zeros((1, 3))})
        with pytest.raises(PansegError, match="size 3 on axis 1"):
            backend.infer({"X": np.zeros((1, 4), np.float32)})
        with pytest.raises(PansegError, match="missing input"):
            backend.infer({})
        with pytest.raises(PansegError, match="unknown output"):
            backend.infer({"X": np.zeros((1, 3), np.float32)}, outputs=["nope"])


def test_closed_backend_refuses_inference(model_path):
    with OnnxRuntimeBackend(model_path) as backend:
        pass
    assert backend.closed
    with pytest.raises(PansegError, match="after close"):
        backend.infer({"X": np.zeros((1, 3), np.float32)})


def test_select_backend_by_extension_and_override(model_path, tmp_path):
    upper = tmp_path / "MODEL.ONNX"
    upper.write_bytes(model_path.read_bytes())
    for path in (model_path, upper):
        with select_backend(path, intra_op_threads=1) as backend:
            assert isinstance(backend, OnnxRuntimeBackend)
            assert backend.session.get_session_options().intra_op_num_threads == 1
    odd = tmp_path / "weights.bin"
    odd.write_bytes(model_path.read_bytes())
    with pytest.raises(PansegError, match=r"\.onnx.*\.plan"):
        select_backend(odd)  # unknown extension lists the accepted ones
    with select_backend(odd, backend="onnxruntime") as backend:
        np.testing.assert_allclose(backend.infer({"X": np.ones((1, 3), np.float32)})["Y"], [[3, 3, 3]])
    with pytest.raises(PansegError, match="unknown backend"):
        select_backend(model_path, backend="openvino")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
@pytest.mark.parametrize("name,backend", [("model.plan", None), ("model.engine", None), ("model.onnx", "tensorrt")])
def test_tensorrt_without_tensorrt_is_a_clear_error(tmp_path, name, backend):
    path = tmp_path / name
    path.write_bytes(b"not an engine")
    with pytest.raises(PansegError, match="TensorRT backend not available"):
        select_backend(path, backend=backend)


def test_cli_arguments_become_backend_options(model_path):
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(["--providers", "cpu", "--intra-op-threads", "2", "--no-ort-cache"])
    options = backend_options_from_args(model_path, args)
    assert options == {"providers": ("cpu",), "intra_op_threads": 2, "inter_op_threads": None,
                       "optimized_cache": False}
    with select_backend(model_path, args.backend, **options) as backend:
        assert backend.session.get_session_options().intra_op_num_threads == 2
        assert backend.cache_path is None


def test_conflicting_onnxruntime_wheels_are_refused():
    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}
    with pytest.raises(PansegError) as info:
        check_single_onnxruntime(versions.get)
    assert "onnxruntime 1.20.0" in str(info.value) and "onnxruntime-gpu 1.20.0" in str(info.value)
    assert "pip uninstall" in str(info.value)
    check_single_onnxruntime({"onnxruntime-gpu": "1.20.0"}.get)  # one wheel is fine


def test_sidecar_metadata_is_strings_like_metadata_props(tmp_path):
    plan = tmp_path / "model.plan"
    side = {"threshold": 0.85, "kind": "panoptic", "categories": [{"id": 1}]}
    (tmp_path / "model.plan.json").write_text(json.dumps(side))
    meta = read_sidecar_metadata(plan)
    assert meta["threshold"] == "0.85" and json.loads(meta["categories"]) == [{"id": 1}]
    assert json.loads(meta["kind"]) == "panoptic"  # every value JSON-encoded, strings too: one strict decoder
    with pytest.raises(PansegError, match="other.plan.json"):
        read_sidecar_metadata(tmp_path / "other.plan")


def test_onnxruntime_is_imported_only_when_a_backend_is_created(model_path):
    code = textwrap.dedent(
        f"""
        import sys
        import runtime.backends
        import runtime.backends.onnxruntime_backend
        assert "onnxruntime" not in sys.modules, "imported too early"
        backend = runtime.backends.select_backend(r"{model_path}", optimized_cache=False)
        assert "onnxruntime" in sys.modules
        print("LAZY-OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "LAZY-OK" in proc.stdout
