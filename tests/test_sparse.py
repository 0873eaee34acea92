"""Query-sparse inference (issue 7): the mask head on the kept queries only gives the full model's results.

References: the full DETRsegm in PyTorch eager (all queries' masks), detr's own concatenation for the first mask
convolution, and the `--full` single graph on ONNX Runtime with the runtime's ordinary post-processing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import STUFF, THING, synthetic_images
from conftest import TINY_CONFIG as TINY
from conftest import separable as _separable
from PIL import Image

from export.onnx import export_checkpoint, read_metadata
from export.onnx.__main__ import main as export_main
from export.onnx.sparse import DetectorGraph, MaskGraph, lay1_image_part, split_first_conv
from export.trt_operators import check_tensorrt_compatible
from runtime.backends import OnnxRuntimeBackend
from runtime.categories import categories_to_json
from runtime.contract import DETECTOR_OUTPUTS, PER_IMAGE_INPUTS
from runtime.errors import PansegError
from runtime.infer import infer
from runtime.panoptic_format import read_panoptic_png
from runtime.pipeline import InferOptions
from runtime.postprocess import postprocess_panoptic, segment_kept
from runtime.preprocess import pad_batch, preprocess
from runtime.sparse import run_query_sparse
from train.checkpoint import save_checkpoint
from train.models import DETRConfig, build_model
from train.models.segmentation import _expand
from train.prepare.synthetic import categories as synthetic_categories
from train.prepare.synthetic import generate_sample

ORT = {"intra_op_threads": 1, "optimized_cache": False}


def _padded(seed: int, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    images = torch.zeros(len(shapes), 3, h, w)
    mask = torch.ones(len(shapes), h, w, dtype=torch.bool)
    for k, (ih, iw) in enumerate(shapes):
        images[k, :, :ih, :iw] = torch.randn(3, ih, iw, generator=generator)
        mask[k, :ih, :iw] = False
    return images, mask


# ---------------------------------------------------------------- eager: subsets and the split convolution


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _separable(build_model(TINY)).eval()


@pytest.fixture(scope="module")
def r50_model() -> torch.nn.Module:
    """detr's R50 panoptic shapes (256 wide, 8 heads, 100 queries, 6+6 layers), random weights."""
    torch.manual_seed(1)
    return build_model(DETRConfig()).eval()


@pytest.mark.parametrize("which", ["tiny", "r50"])
def test_mask_head_on_a_query_subset_equals_the_full_heads_rows(which, tiny_model, r50_model):
    model = tiny_model if which == "tiny" else r50_model
    images, mask = _padded(2, [(64, 80), (48, 64)])
    q = model.detr.num_queries
    subsets = [torch.tensor([q - 1, 0, 3]), torch.tensor([5])]
    with torch.no_grad():
        full = model(images, mask)["pred_masks"]  # detr's forward: every query's mask
        det = model.forward_detector(images, mask)
        detector = dict(zip(DETECTOR_OUTPUTS, DetectorGraph(model)(images, mask), strict=True))
        # forward_masks on a subset of each image's queries (same subset size for both images)
        for subset in subsets:
            got = model.forward_masks(det, det["hs"][:, subset])
            torch.testing.assert_close(got, full[:, subset], atol=1e-4, rtol=1e-4)
        # the exported mask graph on flattened (image, query) pairs, different counts per image
        image_index = torch.tensor([1, 0, 1, 1, 0])
        query_index = torch.tensor([q - 1, 2, 0, 7, q - 1])
        got = MaskGraph(model)(detector["hs"][image_index, query_index], image_index,
                               *(detector[n] for n in PER_IMAGE_INPUTS))
    expected = full[image_index, query_index]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(detector["pred_logits"], det["pred_logits"])


def test_factorized_first_convolution_equals_detrs_concatenation(tiny_model):
    """lay1(cat([expand(src_proj), maps])) == conv(src_proj, W_img) + b (per image) + conv(maps, W_att) (per query)."""
    model = tiny_model
    d, heads = TINY.hidden_dim, TINY.nheads
    generator = torch.Generator().manual_seed(5)
    src_proj = torch.randn(2, d, 3, 4, generator=generator)
    maps = torch.rand(2, 6, heads, 3, 4, generator=generator)  # [B, Q, heads, h, w]
    lay1 = model.mask_head.lay1
    with torch.no_grad():
        # detr's layout: the image features first, then the query's attention maps (query-major within an image)
        reference = lay1(torch.cat([_expand(src_proj, 6), maps.flatten(0, 1)], 1))
        w_img, w_att = split_first_conv(lay1, d)
        per_image = lay1_image_part(model, src_proj)
        per_query = F.conv2d(maps.flatten(0, 1), w_att, padding=1)
        factorized = _expand(per_image, 6) + per_query
        # the other channel order would be a different function (the split must follow detr's cat)
        swapped = F.conv2d(torch.cat([maps.flatten(0, 1), _expand(src_proj, 6)], 1),
                           torch.cat([w_att, w_img], 1), lay1.bias, padding=1)
        wrong = _expand(F.conv2d(src_proj, lay1.weight[:, heads:], lay1.bias, padding=1), 6) + \
            F.conv2d(maps.flatten(0, 1), lay1.weight[:, :heads], padding=1)
    assert w_img.shape[1] == d and w_att.shape[1] == heads
    torch.testing.assert_close(factorized, reference, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(swapped, reference, atol=1e-4, rtol=1e-5)
    assert (wrong - reference).abs().max() > 1.0


# ---------------------------------------------------------------- export and the two-graph pipeline


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sparse")


@pytest.fixture(scope="module")
def images_dir(work) -> Path:
    return synthetic_images(work / "images")


@pytest.fixture(scope="module")
def checkpoint(work, tiny_model) -> Path:
    path = work / "tiny.pth"
    save_checkpoint(path, {"model": tiny_model.state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    return path


@pytest.fixture(scope="module")
def sparse_export(checkpoint, work, images_dir):
    return export_checkpoint(checkpoint, work / "tiny.onnx", verify_images=images_dir, verify_sizes=(64,),
                             verify_max_images=2, progress=False)


@pytest.fixture(scope="module")
def full_model(checkpoint, work) -> Path:
    out = work / "full.onnx"
    assert export_main([str(checkpoint), "-o", str(out), "--full", "--no-verify", "--no-progress"]) == 0
    return out


def test_default_export_is_the_verified_query_sparse_pair(sparse_export, work):
    result = sparse_export
    assert result.path == work / "tiny.onnx" and result.mask_path == work / "tiny.masks.onnx"
    assert result.mask_path.is_file()
    report = result.report
    assert report.verdict == "PASSED", report.problems
    assert set(report.checks.values()) == {"ok"}
    # it compared real kept queries and segments, and every image kept the same queries as eager
    assert sum(k for r in report.runs for k in r.kept) > 0 and all(s for r in report.runs for s in r.same_kept)
    assert sum(n for r in report.runs for n in r.segments) > 0
    assert all(p >= 0.999 for r in report.runs for p in r.pixel_agreement)
    assert {r.case for r in report.runs} == {"64 b1", "64 b2"}
    meta = read_metadata(result.path)
    assert meta["query_sparse"]["mask_graph"] == "tiny.masks.onnx"
    assert list(meta["outputs"]) == list(DETECTOR_OUTPUTS)


def _dims(model: onnx.ModelProto) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}


def test_both_graphs_are_tensorrt_parseable_with_dynamic_dims_and_full_keeps_one_graph(sparse_export, full_model):
    detector, masks = onnx.load(str(sparse_export.path)), onnx.load(str(sparse_export.mask_path))
    check_tensorrt_compatible(detector)
    check_tensorrt_compatible(masks)
    d, m = _dims(detector), _dims(masks)
    assert d["images"] == ["batch", 3, "height", "width"]
    assert d["lay1_image"] == ["batch", TINY.hidden_dim + TINY.nheads, "feat_height", "feat_width"]
    assert m["hs_kept"] == ["kept", TINY.hidden_dim] and m["image_index"] == ["kept"]
    assert m["masks_kept"] == ["kept", "mask_height", "mask_width"]
    assert m["fpn_s4"] == d["fpn_s4"] == ["batch", 16, "mask_height", "mask_width"]
    assert masks.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    # the mask graph has no image-feature input channels in its first convolution: lay1 is split
    conv_inputs = [n for n in masks.graph.node if n.op_type == "Conv"]
    first = {i.name: i for i in masks.graph.initializer}[conv_inputs[0].input[1]]
    assert list(first.dims)[:2] == [TINY.hidden_dim + TINY.nheads, TINY.nheads]
    full = onnx.load(str(full_model))
    assert [o.name for o in full.graph.output] == ["pred_logits", "pred_boxes", "pred_masks"]
    assert "query_sparse" not in read_metadata(full)
    assert not full_model.with_name("full.masks.onnx").exists()


def _batch(names: list[int], sizes: list[int]) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    arrays = [preprocess(Image.fromarray(generate_sample(2, "val", i, size=64).image), s, None)
              for i, s in zip(names, sizes, strict=True)]
    images, mask = pad_batch(arrays)
    return {"images": images, "padding_mask": mask}, [tuple(a.shape[1:]) for a in arrays]


def _force(logits: np.ndarray, image: int, mode: str) -> None:
    """Make every query of one image lose (no-object wins) or win (a confident class, alternating thing/stuff)."""
    if mode == "none":
        logits[image, :, -1] = logits[image].max() + 50.0
    else:
        logits[image, :, -1] = logits[image].min() - 50.0
        logits[image, np.arange(logits.shape[1]), np.where(np.arange(logits.shape[1]) % 2, THING, STUFF)] += 1e3


@pytest.mark.parametrize("case", ["real", "nothing kept", "everything kept", "mixed"])
def test_two_graph_pipeline_equals_the_full_graph(case, sparse_export, full_model):
    """Same padded batch through the full graph (+ postprocess_panoptic) and through detector -> threshold -> mask
    graph (+ segment_kept on what it kept): identical kept queries, masks and panoptic results, with batches of 2 whose
    images keep different numbers of queries (and an image that keeps nothing or everything)."""
    feeds, processed = _batch([0, 1], [64, 48])
    is_thing = {c.id: bool(c.isthing) for c in synthetic_categories()}
    threshold = 0.85
    with OnnxRuntimeBackend(full_model, **ORT) as full, OnnxRuntimeBackend(sparse_export.path, **ORT) as det, \
            OnnxRuntimeBackend(sparse_export.mask_path, **ORT) as masks:
        mask_calls = []

        def run_detector(f, names):
            out = det.infer(f, names)
            if case != "real":
                _force(out["pred_logits"], 0, "all" if case == "everything kept" else "none")
                if case == "everything kept":
                    _force(out["pred_logits"], 1, "all")
            return out

        def run_masks(f, names):
            mask_calls.append(f["image_index"].copy())
            return masks.infer(f, names)

        sparse = run_query_sparse(run_detector, run_masks, feeds, threshold)
        ref = full.infer(feeds)
    logits = ref["pred_logits"]
    if case != "real":
        _force(logits, 0, "all" if case == "everything kept" else "none")
        if case == "everything kept":
            _force(logits, 1, "all")
    np.testing.assert_allclose(sparse.pred_logits, logits, atol=1e-4, rtol=1e-4)
    counts = sparse.kept_counts
    if case == "real":
        assert counts[0] != counts[1] and min(counts) > 0
    elif case == "everything kept":
        assert counts == [TINY.num_queries, TINY.num_queries]
    else:
        assert counts[0] == 0 and counts[1] > 0
    # one mask-graph call with the flattened kept pairs of both images
    assert len(mask_calls) == 1 and mask_calls[0].tolist() == [0] * counts[0] + [1] * counts[1]
    for k in range(2):
        kept = sparse.kept[k]
        np.testing.assert_allclose(kept.masks, ref["pred_masks"][k][kept.indices], atol=1e-3, rtol=1e-4)
    ours = [segment_kept(kept, size, None, is_thing) for kept, size in zip(sparse.kept, processed, strict=True)]
    theirs = postprocess_panoptic(logits, ref["pred_masks"], processed, None, is_thing, threshold)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.id_map, b.id_map)
        assert a.segments_info == b.segments_info
    assert sum(len(r.segments_info) for r in ours) > 0


def test_nothing_kept_in_the_whole_batch_skips_the_mask_graph(sparse_export):
    feeds, processed = _batch([2], [64])
    with OnnxRuntimeBackend(sparse_export.path, **ORT) as det:
        def run_detector(f, names):
            out = det.infer(f, names)
            _force(out["pred_logits"], 0, "none")
            return out

        def run_masks(f, names):
            raise AssertionError("the mask graph must not run when nothing is kept")

        sparse = run_query_sparse(run_detector, run_masks, feeds, 0.5)
    h, w = feeds["images"].shape[2:]
    assert sparse.kept_counts == [0] and sparse.kept[0].masks.shape == (0, -(-h // 4), -(-w // 4))
    result = segment_kept(sparse.kept[0], processed[0], (70, 70), {c.id: True for c in synthetic_categories()})
    assert result.segments_info == [] and result.id_map.shape == (70, 70) and not result.id_map.any()


def test_panseg_rt_infer_runs_the_pair_transparently_and_matches_the_full_graph(sparse_export, full_model, work,
                                                                                 images_dir):
    options = InferOptions(size=64, max_size=107, progress=False, batch_size=2)
    runs = {}
    for name, model in (("sparse", sparse_export.path), ("full", full_model)):
        report = infer(model, [images_dir], work / f"infer_{name}", options, backend_options=ORT)
        assert report.ok and report.done == 3
        runs[name] = work / f"infer_{name}" / "panoptic"
    segments = 0
    for png in sorted(runs["full"].iterdir()):
        ours, theirs = read_panoptic_png(runs["sparse"] / png.name), read_panoptic_png(png)
        np.testing.assert_array_equal(ours, theirs)
        segments += np.count_nonzero(np.unique(theirs))
    assert segments > 0
    predictions = {name: json.loads((folder.parent / "predictions.json").read_text()) for name, folder in runs.items()}
    assert predictions["sparse"]["annotations"] == predictions["full"]["annotations"]
    # a detector without its mask graph is refused by name
    lonely = work / "lonely"
    lonely.mkdir()
    shutil.copy(sparse_export.path, lonely / "tiny.onnx")
    with pytest.raises(PansegError, match=r"mask graph .*tiny\.masks\.onnx is missing"):
        infer(lonely / "tiny.onnx", [images_dir], work / "infer_lonely", options, backend_options=ORT)


def test_static_shape_export_fixes_image_dims_but_keeps_the_kept_dimension_dynamic(checkpoint, work, images_dir,
                                                                                   capsys):
    out = work / "static.onnx"
    code = export_main([str(checkpoint), "-o", str(out), "--static-shape", "64x96", "--batch", "2", "--no-simplify",
                        "--verify-images", str(images_dir), "--verify-max-images", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verification PASSED" in printed and f"its mask graph {work / 'static.masks.onnx'}" in printed
    d, m = _dims(onnx.load(str(out))), _dims(onnx.load(str(work / "static.masks.onnx")))
    assert d["images"] == [2, 3, 64, 96] and d["fpn_s4"] == [2, 16, 16, 24]
    assert m["hs_kept"] == ["kept", TINY.hidden_dim] and m["masks_kept"] == ["kept", 16, 24]
