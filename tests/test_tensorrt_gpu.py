"""TensorRT engines on a real GPU: build from a tiny export, parity with ONNX Runtime across the profile, refusals;
the query-sparse pair (detector + mask engine) built in one run and run through runtime/sparse.py and panseg-rt infer.

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
from conftest import TINY_CONFIG as TINY  # noqa: E402
from conftest import random_padded_batch  # noqa: E402

from export.onnx import export_checkpoint  # noqa: E402
from export.tensorrt.__main__ import main  # noqa: E402
from runtime.backends import OnnxRuntimeBackend, select_backend  # noqa: E402
from runtime.backends.tensorrt_backend import TensorRTBackend  # noqa: E402
from runtime.categories import categories_to_json  # noqa: E402
from runtime.contract import sidecar_path  # noqa: E402
from runtime.sparse import PER_IMAGE_INPUTS, run_query_sparse  # noqa: E402
from runtime.trt_sidecar import read_engine_sidecar  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.models import build_model  # noqa: E402
from train.prepare.synthetic import categories as synthetic_categories  # noqa: E402

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
    # detr's single graph (--full); the query-sparse pair (two engines from one build) has its own fixtures below
    return export_checkpoint(ckpt, workdir / "tiny.onnx", run_verification=False, progress=False, full=True).path


@pytest.fixture(scope="module")
def plan(onnx_model, workdir) -> Path:
    path = workdir / "tiny.plan"
    code = main([str(onnx_model), "-o", str(path), *PROFILE, "--workspace", "1",
                 "--timing-cache", str(workdir / "timing.cache"), "--no-progress"])
    assert code == 0
    return path


@pytest.fixture(scope="module")
def engines(plan, onnx_model):
    with TensorRTBackend(plan) as trt_backend, OnnxRuntimeBackend(onnx_model, optimized_cache=False) as ort_backend:
        yield trt_backend, ort_backend


def _batch(shapes: list[tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    images, mask = random_padded_batch(shapes, seed)
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
    assert main([str(onnx_model), "-o", str(path), *PROFILE, "--no-progress", *flags]) == 0
    _, info = read_engine_sidecar(path)
    assert info.version_compatible and info.hardware_compatibility in ("ampere+", "same")
    feeds = _batch([(64, 96)], 7)
    with TensorRTBackend(path) as compatible:
        got = compatible.infer(feeds, outputs=["pred_boxes"])["pred_boxes"]
    want = engines[1].infer(feeds, outputs=["pred_boxes"])["pred_boxes"]
    assert float(np.max(np.abs(got - want))) <= ATOL + RTOL * float(np.max(np.abs(want)))


# ---------------------------------------------------------------- query-sparse pair


@pytest.fixture(scope="module")
def sparse_onnx(workdir) -> Path:
    """The export's default for a panoptic model: sparse.onnx (detector) + sparse.masks.onnx (mask head)."""
    torch.manual_seed(0)
    ckpt = workdir / "sparse.pth"
    save_checkpoint(ckpt, {"model": build_model(TINY).state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    result = export_checkpoint(ckpt, workdir / "sparse.onnx", run_verification=False, progress=False)
    assert result.mask_path == workdir / "sparse.masks.onnx"
    return result.path


@pytest.fixture(scope="module")
def sparse_plan(sparse_onnx, workdir) -> Path:
    path = workdir / "sparse.plan"
    assert main([str(sparse_onnx), "-o", str(path), *PROFILE, "--workspace", "1", "--no-progress"]) == 0
    return path


@pytest.fixture(scope="module")
def pair(sparse_plan, sparse_onnx):
    masks_plan, masks_onnx = sparse_plan.with_name("sparse.masks.plan"), sparse_onnx.with_name("sparse.masks.onnx")
    with TensorRTBackend(sparse_plan) as det, TensorRTBackend(masks_plan) as masks, \
            OnnxRuntimeBackend(sparse_onnx, optimized_cache=False) as ort_det, \
            OnnxRuntimeBackend(masks_onnx, optimized_cache=False) as ort_masks:
        yield (det, masks), (ort_det, ort_masks)


def _close(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, name
    if want.dtype == np.bool_:  # memory_mask: the padding, exact
        assert np.array_equal(got, want), name
        return
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= ATOL + RTOL * float(np.max(np.abs(want), initial=0.0)), (name, err)


def test_one_build_writes_both_engines_whose_side_files_link_them(sparse_plan, pair):
    masks_plan = sparse_plan.with_name("sparse.masks.plan")
    metadata, info = read_engine_sidecar(sparse_plan)
    entry = json.loads(metadata["query_sparse"])
    assert entry["mask_graph"] == masks_plan.name and entry["onnx_mask_graph"]["file"] == "sparse.masks.onnx"
    mask_metadata, mask_info = read_engine_sidecar(masks_plan)
    assert mask_metadata["panseg_mask_graph_of"] == sparse_plan.name and mask_info.gpu == info.gpu == GPU
    assert mask_info.profile["hs_kept"].max[0] == 2 * TINY.num_queries  # max batch 2 x queries
    (_, masks), _ = pair
    assert masks.profiles["hs_kept"] == mask_info.profile["hs_kept"]  # the engine's own profile, as the side file says
    specs = {s.name: s for s in masks.input_specs()}
    assert specs["image_index"].dtype == np.int64 and specs["hs_kept"].shape[0] == "kept"


@pytest.mark.parametrize("shapes", [[(64, 64)], [(128, 128)], [(96, 80), (64, 128)]], ids=["min", "max", "b2"])
def test_pair_matches_onnxruntime_graph_by_graph(pair, shapes):
    """Each engine against its ONNX graph on the same inputs: the detector on the images, the mask engine on every
    query of the batch (ONNX Runtime's detector outputs), the largest kept batch its profile allows."""
    (det, masks), (ort_det, ort_masks) = pair
    feeds = _batch(shapes, seed=11 * len(shapes) + shapes[0][1])
    got, want = det.infer(feeds), ort_det.infer(feeds)
    for name in want:
        _close(got[name], want[name], name)
    b, q = want["hs"].shape[:2]
    mask_feeds = {"hs_kept": want["hs"].reshape(b * q, -1), "image_index": np.repeat(np.arange(b, dtype=np.int64), q),
                  **{n: want[n] for n in PER_IMAGE_INPUTS}}
    _close(masks.infer(mask_feeds)["masks_kept"], ort_masks.infer(mask_feeds)["masks_kept"], "masks_kept")


def test_pair_matches_onnxruntimes_sparse_path(pair):
    """runtime/sparse.py end to end on both backends: the same queries are kept and their masks agree."""
    (det, masks), (ort_det, ort_masks) = pair
    feeds = _batch([(128, 96), (80, 128)], seed=21)
    want = run_query_sparse(ort_det.infer, ort_masks.infer, feeds, threshold=0.0)
    got = run_query_sparse(det.infer, masks.infer, feeds, threshold=0.0)
    assert sum(want.kept_counts) > 0  # random weights still keep some queries at threshold 0
    for i, (k_got, k_want) in enumerate(zip(got.keep, want.keep, strict=True)):
        common = np.intersect1d(k_got, k_want)
        assert common.size >= 0.9 * k_want.size, i  # a logit near the no-object boundary may flip
        _close(got.masks[i][np.searchsorted(k_got, common)], want.masks[i][np.searchsorted(k_want, common)], "masks")


def test_infer_runs_the_pair_from_the_detector_plan(sparse_plan, sparse_onnx, tmp_path):
    """panseg-rt infer sparse.plan: the mask engine is found through the side file and loaded with TensorRT."""
    from PIL import Image

    from runtime.infer import infer
    from runtime.panoptic_format import read_panoptic_png
    from runtime.pipeline import InferOptions

    rng = np.random.default_rng(5)
    images = []
    for k, (w, h) in enumerate(((96, 64), (64, 96))):
        images.append(tmp_path / f"img{k}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images[-1])
    options = InferOptions(threshold=0.0, size=64, max_size=128, progress=False)
    report = infer(sparse_plan, images, tmp_path / "trt", options)
    reference = infer(sparse_onnx, images, tmp_path / "ort", options)
    assert report.done == reference.done == len(images) and not report.failures
    for k in range(len(images)):
        got = read_panoptic_png(tmp_path / "trt" / "panoptic" / f"img{k}.png")
        want = read_panoptic_png(tmp_path / "ort" / "panoptic" / f"img{k}.png")
        assert got.shape == want.shape and np.mean(got == want) >= 0.9, k


# ---------------------------------------------------------------- the pair's hand-off on the device


def test_device_pair_gives_what_the_numpy_hand_off_gives(pair):
    """TensorRTPair (per-image tensors read in place on the GPU) against runtime/sparse.py on the same two engines
    (per-image tensors through the host): the same engines on the same bytes, so the same bytes come out."""
    from runtime.backends.tensorrt_pair import TensorRTPair

    (det, masks), _ = pair
    device_pair = TensorRTPair(det, masks)
    for shapes, seed in (([(128, 96), (80, 128)], 31), ([(64, 64)], 32), ([(128, 128)], 33)):
        feeds = _batch(shapes, seed)
        want = run_query_sparse(det.infer, masks.infer, feeds, threshold=0.0)
        device_pair.reset_transfers()
        got = device_pair.run(feeds, threshold=0.0)
        assert sum(want.kept_counts) > 0
        assert np.array_equal(got.pred_logits, want.pred_logits) and got.kept_counts == want.kept_counts
        for g, w in zip(got.kept, want.kept, strict=True):
            assert np.array_equal(g.indices, w.indices) and np.array_equal(g.masks, w.masks)
        traffic = device_pair.transfers()
        inputs = feeds["images"].nbytes + feeds["padding_mask"].nbytes
        returned = sum(k.masks.nbytes for k in got.kept)
        kept = sum(got.kept_counts)
        assert traffic.crossed_bytes - inputs - returned == \
            got.pred_logits.nbytes + got.pred_boxes.nbytes + kept * 8  # logits, boxes down; image_index up


def test_load_model_runs_a_plan_pair_on_the_device_and_close_frees_its_memory(sparse_plan):
    from runtime.backends.tensorrt_cuda import cuda_check
    from runtime.model import load_model

    cudart = import_cudart()
    images, mask = random_padded_batch([(96, 128)], 41)
    free_before = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")[0]
    model = load_model(sparse_plan)
    assert model.device_pair is not None
    for _ in range(3):
        model.run(images, mask, threshold=0.0)
    model.close()
    cudart.cudaDeviceSynchronize()
    free_after = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")[0]
    assert int(free_before) - int(free_after) <= 2 << 20


def test_a_call_from_another_thread_uses_the_backends_device(plan):
    import threading

    feeds = _batch([(64, 96)], 51)
    with TensorRTBackend(plan, device=0) as backend:
        want = backend.infer(feeds, ["pred_boxes"])["pred_boxes"]
        got: list = []
        thread = threading.Thread(target=lambda: got.append(backend.infer(feeds, ["pred_boxes"])["pred_boxes"]))
        thread.start()
        thread.join()
        assert got and np.array_equal(got[0], want)


def test_no_tf32_build_is_close_to_fp32_and_inspect_dumps_the_layers(onnx_model, engines, workdir):
    """--no-tf32 keeps FP32 layers off TF32 tensor cores: agreement with ONNX Runtime's FP32 is far tighter than the
    TF32 tolerance above. --inspect writes the engine inspector's JSON next to the plan."""
    path = workdir / "exact.plan"
    assert main([str(onnx_model), "-o", str(path), *PROFILE, "--no-tf32", "--inspect", "--quiet"]) == 0
    _, info = read_engine_sidecar(path)
    assert info.builder["tf32"] is False
    layers = json.loads(path.with_name("exact.plan.layers.json").read_text())
    assert layers.get("Layers"), "the inspector listed no layers"
    feeds = _batch([(96, 128)], 61)
    with TensorRTBackend(path) as exact:
        got = exact.infer(feeds)
    want = engines[1].infer(feeds)
    for name, ref in want.items():
        err = float(np.max(np.abs(got[name] - ref)))
        assert err <= 1e-4 + 1e-3 * float(np.max(np.abs(ref))), (name, err)
