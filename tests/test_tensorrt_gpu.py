"""TensorRT engines on a real GPU: build from a tiny export, parity with ONNX Runtime across the profile, refusals.

Skipped cleanly (the whole module) where tensorrt, cuda-python or a CUDA device is missing. Run with
``pytest tests/test_tensorrt_gpu.py -m gpu``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.gpu

trt = pytest.importorskip("tensorrt")

from runtime.backends.tensorrt_backend import current_gpu, import_cudart  # noqa: E402
from runtime.errors import PansegError  # noqa: E402

try:
    GPU = current_gpu(import_cudart())
except PansegError as exc:  # no cuda-python, no driver, no device
    pytest.skip(f"no usable CUDA device: {exc}", allow_module_level=True)

import torch  # noqa: E402

from export.onnx import export_checkpoint  # noqa: E402
from export.tensorrt.__main__ import main  # noqa: E402
from runtime.backends import OnnxRuntimeBackend, select_backend, sidecar_path  # noqa: E402
from runtime.backends.tensorrt_backend import TensorRTBackend  # noqa: E402
from runtime.categories import categories_to_json  # noqa: E402
from runtime.trt_sidecar import read_engine_sidecar  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.models import DETRConfig, build_model  # noqa: E402
from train.prepare.synthetic import categories as synthetic_categories  # noqa: E402

TINY = DETRConfig(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=256,
                  num_queries=10, num_classes=12, dropout=0.0)
PROFILE = ["--min-shape", "1x64x64", "--opt-shape", "1x64x96", "--max-shape", "2x128x128"]
# FP32 engine vs FP32 ONNX Runtime: TensorRT may use TF32 tensor cores for FP32 convolutions and matmuls on Ampere+,
# which keeps ~10 mantissa bits; errors are judged relative to each output's scale.
RTOL, ATOL = 2e-2, 1e-3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt_gpu")


@pytest.fixture(scope="module")
def onnx_model(workdir) -> Path:
    torch.manual_seed(0)
    ckpt = workdir / "tiny.pth"
    save_checkpoint(ckpt, {"model": build_model(TINY).state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    # detr's single graph: the two-engine build of the query-sparse export is not written yet
    return export_checkpoint(ckpt, workdir / "tiny.onnx", run_verification=False, progress=False, full=True).path


@pytest.fixture(scope="module")
def plan(onnx_model, workdir) -> Path:
    path = workdir / "tiny.plan"
    code = main([str(onnx_model), "-o", str(path), *PROFILE, "--workspace", "1",
                 "--timing-cache", str(workdir / "timing.cache"), "--quiet"])
    assert code == 0
    return path


@pytest.fixture(scope="module")
def engines(plan, onnx_model):
    with TensorRTBackend(plan) as trt_backend, OnnxRuntimeBackend(onnx_model, optimized_cache=False) as ort_backend:
        yield trt_backend, ort_backend


def _batch(shapes: list[tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    images = np.zeros((len(shapes), 3, h, w), np.float32)
    mask = np.ones((len(shapes), h, w), bool)
    for k, (ih, iw) in enumerate(shapes):
        images[k, :, :ih, :iw] = rng.standard_normal((3, ih, iw))
        mask[k, :ih, :iw] = False
    return {"images": images, "padding_mask": mask}


def test_build_writes_a_plan_and_a_side_file_describing_it(plan, onnx_model, workdir):
    metadata, info = read_engine_sidecar(plan)
    assert info.tensorrt_version == trt.__version__
    assert info.gpu == GPU
    assert info.profile["padding_mask"].max == (2, 128, 128)
    onnx_meta = {p.key: p.value for p in onnx.load(str(onnx_model), load_external_data=False).metadata_props}
    assert {k: json.loads(v) for k, v in metadata.items() if k != "tensorrt"} == \
        {k: json.loads(v) for k, v in onnx_meta.items()}
    assert (workdir / "timing.cache").stat().st_size > 0
    # a pure TensorRT plan: TensorRT itself deserializes it without our side file
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(plan.read_bytes()) is not None


@pytest.mark.parametrize("shapes", [[(64, 64)], [(128, 128)], [(64, 128)], [(128, 64)], [(96, 80), (64, 128)]],
                         ids=["min", "max", "landscape", "portrait", "b2-padded"])
def test_engine_matches_onnxruntime_across_the_profile(engines, shapes):
    trt_backend, ort_backend = engines
    feeds = _batch(shapes, seed=len(shapes) * 100 + shapes[0][0])
    got, want = trt_backend.infer(feeds), ort_backend.infer(feeds)
    assert set(got) == set(want) == {"pred_logits", "pred_boxes", "pred_masks"}
    for name, ref in want.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, name
        err = float(np.max(np.abs(got[name] - ref)))
        assert err <= ATOL + RTOL * float(np.max(np.abs(ref))), (name, err)
    assert np.mean(got["pred_logits"].argmax(-1) == want["pred_logits"].argmax(-1)) >= 0.9


def test_only_the_requested_outputs_come_back_and_buffers_are_reused(engines):
    trt_backend, _ = engines
    small, large = _batch([(64, 64)], 1), _batch([(128, 128), (80, 96)], 2)
    first = trt_backend.infer(small)
    trt_backend.infer(large)  # grows the buffers
    only = trt_backend.infer(small, outputs=["pred_logits"])
    assert set(only) == {"pred_logits"}
    np.testing.assert_allclose(only["pred_logits"], first["pred_logits"], rtol=1e-5, atol=1e-6)


def test_shapes_outside_the_profile_are_errors_naming_the_range(engines):
    trt_backend, _ = engines
    with pytest.raises(PansegError, match=r"axis 2 is 32, allowed 64\.\.128"):
        trt_backend.infer(_batch([(32, 64)], 3))
    with pytest.raises(PansegError, match=r"axis 0 is 3, allowed 1\.\.2"):
        trt_backend.infer(_batch([(64, 64)] * 3, 4))
    trt_backend.infer(_batch([(64, 64)], 5))  # and the engine still works afterwards


def test_specs_metadata_and_selection_by_extension(plan, onnx_model):
    with select_backend(plan) as backend:
        assert isinstance(backend, TensorRTBackend)
        specs = {s.name: s for s in backend.input_specs()}
        assert specs["images"].dtype == np.float32 and specs["padding_mask"].dtype == np.bool_
        assert specs["images"].shape == ("batch", 3, "height", "width")
        assert [s.name for s in backend.output_specs()] == ["pred_logits", "pred_boxes", "pred_masks"]
        with OnnxRuntimeBackend(onnx_model, optimized_cache=False) as ort_backend:
            assert json.loads(backend.metadata()["categories"]) == json.loads(ort_backend.metadata()["categories"])


def _copy_with_sidecar(plan: Path, folder: Path, edit) -> Path:
    folder.mkdir()
    target = folder / plan.name
    shutil.copy(plan, target)
    data = json.loads(sidecar_path(plan).read_text())
    edit(data)
    sidecar_path(target).write_text(json.dumps(data))
    return target


def test_plans_from_another_tensorrt_version_or_gpu_are_refused(plan, tmp_path):
    def other_version(data):
        data["tensorrt"]["tensorrt_version"] = "9.3.0.1"

    def other_gpu(data):
        data["tensorrt"]["gpu"]["compute_capability"] = "5.0"

    with pytest.raises(PansegError, match="built with TensorRT 9.3.0.1"):
        TensorRTBackend(_copy_with_sidecar(plan, tmp_path / "version", other_version))
    with pytest.raises(PansegError, match="compute capability 5.0"):
        TensorRTBackend(_copy_with_sidecar(plan, tmp_path / "gpu", other_gpu))
    stale = _copy_with_sidecar(plan, tmp_path / "stale", lambda data: None)
    stale.write_bytes(stale.read_bytes() + b"\0")
    with pytest.raises(PansegError, match="does not match its side file"):
        TensorRTBackend(stale)


def test_version_and_hardware_compatible_build_loads_and_agrees(onnx_model, engines, workdir):
    path = workdir / "compatible.plan"
    flags = ["--version-compatible"] + (["--hardware-compatibility", "ampere+"] if GPU.compute_capability >= (8, 0)
                                        else ["--hardware-compatibility", "same"])
    assert main([str(onnx_model), "-o", str(path), *PROFILE, "--quiet", *flags]) == 0
    _, info = read_engine_sidecar(path)
    assert info.version_compatible and info.hardware_compatibility in ("ampere+", "same")
    feeds = _batch([(64, 96)], 7)
    with TensorRTBackend(path) as compatible:
        got = compatible.infer(feeds, outputs=["pred_boxes"])["pred_boxes"]
    want = engines[1].infer(feeds, outputs=["pred_boxes"])["pred_boxes"]
    assert float(np.max(np.abs(got - want))) <= ATOL + RTOL * float(np.max(np.abs(want)))
