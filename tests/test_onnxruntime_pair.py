"""The ONNX Runtime query-sparse pair with the hand-off through IO binding (runtime/backends/onnxruntime_pair.py).

The reference is the numpy hand-off (runtime.sparse.run_query_sparse over ``Backend.infer``) on the same tiny real
export: the results must be byte-identical, since only where the per-image tensors live between the two sessions
changes. On this CPU-only machine the bound tensors live in host memory; on a GPU the same code binds them on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import random_padded_batch, separable

from export.onnx import export_checkpoint
from runtime.backends import OnnxRuntimeBackend
from runtime.backends.onnxruntime_backend import OrtTensor
from runtime.backends.onnxruntime_pair import OnnxRuntimePair
from runtime.categories import categories_to_json
from runtime.contract import DETECTOR_OUTPUTS, FPN_S4, HS, MASK_GRAPH_OUTPUT, PER_IMAGE_INPUTS
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.postprocess import ModelOutputs
from runtime.sparse import kept_pairs, mask_graph_feeds, run_query_sparse
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories

ORT = {"intra_op_threads": 1, "optimized_cache": False}
BATCHES = [([(64, 64)], 0), ([(64, 48), (40, 64)], 1), ([(48, 48), (64, 40), (56, 56)], 2)]


@pytest.fixture(scope="module")
def pair_paths(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ort_pair")
    torch.manual_seed(0)
    ckpt = folder / "tiny.pth"
    save_checkpoint(ckpt, {"model": separable(build_model(TINY)).state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    result = export_checkpoint(ckpt, folder / "tiny.onnx", run_verification=False, progress=False)
    return result.path, result.mask_path


@pytest.fixture(scope="module")
def sessions(pair_paths):
    with OnnxRuntimeBackend(pair_paths[0], **ORT) as det, OnnxRuntimeBackend(pair_paths[1], **ORT) as masks:
        yield det, masks


def assert_byte_identical(got: ModelOutputs, want: ModelOutputs) -> None:
    for a, b in ((got.pred_logits, want.pred_logits), (got.pred_boxes, want.pred_boxes)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert got.kept_counts == want.kept_counts
    for g, w in zip(got.kept, want.kept, strict=True):
        for field in ("indices", "scores", "labels", "masks"):
            a, b = getattr(g, field), getattr(w, field)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), field


def keep_some(logits: np.ndarray, boxes: np.ndarray):
    """A selection keeping a different number of queries per image (by the image's first logit), some none."""
    count = int(abs(logits[0, 0]) * 1000) % (logits.shape[0] + 1)
    keep = np.arange(0, logits.shape[0], 2)[:count]
    return keep, np.ones(keep.size, np.float32), np.zeros(keep.size, np.int64)


def median_score(det: OnnxRuntimeBackend, feeds) -> float:
    """A threshold that keeps about half the queries: the median of their best class probability."""
    logits = det.infer(feeds, ["pred_logits"])["pred_logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return float(np.median(probs[..., :-1].max(-1)))


@pytest.mark.parametrize("shapes,seed", BATCHES)
@pytest.mark.parametrize("rule", ["threshold", "everything", "nothing", "some"])
def test_the_bound_hand_off_is_byte_identical_to_the_numpy_one(sessions, shapes, seed, rule):
    det, masks = sessions
    images, mask = random_padded_batch(shapes, seed)
    feeds = {"images": images, "padding_mask": mask}
    threshold, select = {"threshold": (median_score(det, feeds), None), "everything": (0.0, None),
                         "nothing": (1.1, None), "some": (0.0, keep_some)}[rule]
    got = OnnxRuntimePair(det, masks).run(feeds, threshold, select=select)
    want = run_query_sparse(det.infer, masks.infer, feeds, threshold, select=select)
    assert_byte_identical(got, want)
    kept = sum(got.kept_counts)
    if rule == "everything":
        assert kept == len(shapes) * TINY.num_queries
    elif rule == "nothing":
        assert kept == 0
    elif rule == "threshold":
        assert 0 < kept < len(shapes) * TINY.num_queries  # the threshold really selects here


def test_per_image_outputs_stay_ort_tensors_and_are_bound_in_place(sessions):
    det, masks = sessions
    images, mask = random_padded_batch([(64, 48), (40, 64)], 3)
    feeds = {"images": images, "padding_mask": mask}
    bound = det.infer_bound(feeds, list(DETECTOR_OUTPUTS), keep=PER_IMAGE_INPUTS)
    assert all(isinstance(bound[n], OrtTensor) for n in PER_IMAGE_INPUTS)
    assert all(isinstance(bound[n], np.ndarray) for n in DETECTOR_OUTPUTS if n not in PER_IMAGE_INPUTS)
    assert det.device_location == ("cpu", 0) and bound[FPN_S4].value.device_name() == "cpu"
    plain = det.infer(feeds, list(DETECTOR_OUTPUTS))
    for name in DETECTOR_OUTPUTS:
        value = bound[name].value.numpy() if name in PER_IMAGE_INPUTS else bound[name]
        assert value.shape == plain[name].shape and value.tobytes() == plain[name].tobytes(), name
    image_index, query_index = kept_pairs([np.array([1, 4]), np.array([0, 2, 9])])
    got = masks.infer_bound(mask_graph_feeds(bound, image_index, query_index), [MASK_GRAPH_OUTPUT])
    want = masks.infer(mask_graph_feeds(plain, image_index, query_index), [MASK_GRAPH_OUTPUT])
    assert isinstance(got[MASK_GRAPH_OUTPUT], np.ndarray) and got[MASK_GRAPH_OUTPUT].shape[0] == 5
    assert got[MASK_GRAPH_OUTPUT].tobytes() == want[MASK_GRAPH_OUTPUT].tobytes()
    assert bound[HS].shape[:2] == (2, TINY.num_queries)


def test_load_model_runs_an_onnxruntime_pair_through_the_bound_hand_off(pair_paths, sessions):
    det, masks = sessions
    images, mask = random_padded_batch([(64, 64), (48, 56)], 4)
    with load_model(pair_paths[0], backend_options=ORT) as model:
        assert isinstance(model.bound_pair, OnnxRuntimePair) and model.device_pair is None
        got = model.run(images, mask, threshold=0.85)
    want = run_query_sparse(det.infer, masks.infer, {"images": images, "padding_mask": mask}, 0.85)
    assert_byte_identical(got, want)
    assert sum(got.kept_counts) > 0


def test_a_bound_feed_of_the_wrong_type_or_an_unknown_output_is_a_clear_error(sessions):
    det, masks = sessions
    images, mask = random_padded_batch([(64, 64)], 5)
    bound = det.infer_bound({"images": images, "padding_mask": mask}, list(DETECTOR_OUTPUTS), keep=PER_IMAGE_INPUTS)
    feeds = mask_graph_feeds(bound, *kept_pairs([np.array([0])]))
    feeds[FPN_S4] = OrtTensor(ort.OrtValue.ortvalue_from_numpy(np.zeros(bound[FPN_S4].shape, np.int64)))
    with pytest.raises(PansegError, match=rf"{masks.path.name}: input {FPN_S4} must be float32, got int64"):
        masks.infer_bound(feeds, [MASK_GRAPH_OUTPUT])
    with pytest.raises(PansegError, match=rf"{det.path.name}: unknown output\(s\) nope"):
        det.infer_bound({"images": images, "padding_mask": mask}, ["nope"])


def test_the_bound_hand_off_refuses_a_closed_backend(pair_paths):
    det = OnnxRuntimeBackend(pair_paths[0], **ORT)
    det.close()
    images, mask = random_padded_batch([(64, 64)], 6)
    with pytest.raises(PansegError, match="used after close"):
        det.infer_bound({"images": images, "padding_mask": mask}, [FPN_S4], keep=[FPN_S4])


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_on_cuda_the_per_image_tensors_stay_on_the_gpu_and_the_results_match(pair_paths):
    options = {**ORT, "providers": ("cuda",)}
    images, mask = random_padded_batch([(64, 48), (40, 64)], 7)
    feeds = {"images": images, "padding_mask": mask}
    with OnnxRuntimeBackend(pair_paths[0], **options) as det, OnnxRuntimeBackend(pair_paths[1], **options) as masks:
        assert det.device_location == masks.device_location == ("cuda", 0)
        bound = det.infer_bound(feeds, list(DETECTOR_OUTPUTS), keep=PER_IMAGE_INPUTS)
        assert all(bound[n].value.device_name().lower() == "cuda" for n in PER_IMAGE_INPUTS)
        got = OnnxRuntimePair(det, masks).run(feeds, 0.0)
        want = run_query_sparse(det.infer, masks.infer, feeds, 0.0)
    assert got.kept_counts == want.kept_counts == [TINY.num_queries] * 2
    for g, w in zip(got.kept, want.kept, strict=True):
        np.testing.assert_array_equal(g.indices, w.indices)
        np.testing.assert_allclose(g.masks, w.masks, rtol=1e-5, atol=1e-5)  # same kernels; CUDA may reorder sums
