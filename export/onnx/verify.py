"""Verification of an exported graph: structure, TensorRT operators, and ONNX Runtime against PyTorch eager.

Checks, in order:

* ``onnx.checker`` with full (strict) shape inference; no float64 anywhere; every operator parseable by TensorRT
  (export/trt_operators.py); dynamic inputs really symbolic.
* Numerics on real images: each image alone (batch 1) and images in pairs padded to a common size (batch 2; the
  second image is taken at a smaller size so there always is padding) at several shorter-side sizes, with the graph
  traced at another batch size and input size. Both engines get the very same padded batch, so any difference is
  the export's. Per output: max absolute error and error relative to the output's scale (max|ref|); an output
  passes when ``max_abs <= atol + rtol * max|ref|``.
* The final panoptic segmentation: the numpy runtime's post-processing (runtime/postprocess.py) on the eager outputs
  vs on the ONNX Runtime outputs, i.e. the training evaluation path vs the deployment path; per image the fraction
  of pixels in the same segment, and whether the segments are the same (one-to-one, same categories).

A query-sparse export (detector + mask graph, :func:`verify_sparse`) runs the runtime's own two-graph pipeline
(runtime/sparse.py) on ONNX Runtime against the *full* eager model: per image the kept queries must be the same
(decided on each engine's logits), the kept queries' masks within tolerance of eager's rows for them, and the
panoptic results the same. Both graphs get the structural checks; the mask graph's kept-query dimension must be
symbolic.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from tqdm import tqdm

from export.onnx.graph import FullModel, ShapePolicy
from export.trt_operators import check_tensorrt_compatible
from runtime.contract import HS_KEPT, IMAGE_INDEX, KEPT_DIM, MASK_GRAPH_OUTPUTS
from runtime.errors import PansegError
from runtime.postprocess import DEFAULT_THRESHOLD, PanopticResult, postprocess_panoptic, segment_kept, select_queries
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, load_image, pad_batch, preprocess
from runtime.sparse import run_query_sparse

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_SIZES = (96, 160)
DEFAULT_MAX_IMAGES = 4
SYNTHETIC_VAL = Path("data/synthetic/val2017")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_OUTPUT_KEY = {"pred_logits": "logits", "pred_boxes": "boxes", "pred_masks": "masks"}


@dataclass(frozen=True)
class Tolerances:
    """An output passes when max_abs <= atol + rtol * max|reference|; segmentations by pixel agreement."""

    logits_atol: float = 1e-3
    boxes_atol: float = 1e-4
    masks_atol: float = 1e-2
    rtol: float = 1e-3
    min_pixel_agreement: float = 0.999  # near-tied masks (untrained models) may flip a few pixels
    same_segments: bool = True  # require the same segments (one-to-one, same categories) in every image

    def atol(self, output: str) -> float:
        return getattr(self, f"{_OUTPUT_KEY[output]}_atol")


@dataclass
class OutputError:
    max_abs: float
    max_rel: float  # max_abs / max|reference|
    scale: float  # max|reference|
    passed: bool


@dataclass
class Run:
    """One batch through both engines."""

    case: str  # e.g. "96 b2"
    input_shape: list[int]
    images: list[str]
    errors: dict[str, OutputError]
    pixel_agreement: list[float] = field(default_factory=list)
    same_segments: list[bool] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # per image, in the eager result
    eager_ms: float = 0.0
    onnxruntime_ms: float = 0.0
    passed: bool = True
    kept: list[int] = field(default_factory=list)  # query-sparse: per image, queries kept (eager's logits)
    same_kept: list[bool] = field(default_factory=list)  # query-sparse: same kept queries in both engines


@dataclass
class Report:
    checks: dict[str, str] = field(default_factory=dict)  # name -> "ok" or the problem
    runs: list[Run] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    verdict: str = "FAILED"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "PASSED"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an infinite or NaN error becomes null: strict JSON has no Infinity)."""
        return _finite(asdict(self))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# -- structural checks -----------------------------------------------------------------------------------------------


def float64_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of float64 initializers, constants, casts and typed values (TensorRT has no float64)."""
    double = onnx.TensorProto.DOUBLE
    found = [t.name for t in model.graph.initializer if t.data_type == double]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                found.append(node.name or node.op_type)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == double:
                found.append(node.name or "Cast")
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == double:
            found.append(value.name)
    return found


def structural_checks(model: onnx.ModelProto, policy: ShapePolicy) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        checks["onnx_checker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - checker and inference raise several types
        checks["onnx_checker"] = " ".join(str(exc).split())[:300]
        inferred = model
    doubles = float64_tensors(inferred)
    checks["no_float64"] = "ok" if not doubles else f"float64 in {', '.join(doubles[:5])}"
    try:
        check_tensorrt_compatible(model)
        checks["tensorrt_operators"] = "ok"
    except PansegError as exc:
        checks["tensorrt_operators"] = str(exc)
    # (batch, height, width) axes of each input
    axes = {"images": (0, 2, 3), "padding_mask": (0, 1, 2)}
    wanted = (policy.dynamic_batch, policy.dynamic_size, policy.dynamic_size)
    frozen = []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dynamic in zip(axes.get(value.name, ()), wanted, strict=False):
            if dynamic and axis < len(dims) and not dims[axis].dim_param:
                frozen.append(f"{value.name}[{axis}]")
    checks["dynamic_dims"] = "ok" if not frozen else f"fixed but meant dynamic: {', '.join(sorted(set(frozen)))}"
    return checks


def kept_dims_frozen(mask_graph: onnx.ModelProto) -> list[str]:
    """Mask-graph tensors whose kept-query dimension (axis 0) is not symbolic."""
    frozen = []
    for value in list(mask_graph.graph.input) + list(mask_graph.graph.output):
        if value.name in (HS_KEPT, IMAGE_INDEX, *MASK_GRAPH_OUTPUTS):
            dims = value.type.tensor_type.shape.dim
            if not dims or dims[0].dim_param != KEPT_DIM:
                frozen.append(value.name)
    return frozen


def sparse_structural_checks(detector: onnx.ModelProto, mask_graph: onnx.ModelProto, policy: ShapePolicy
                             ) -> dict[str, str]:
    """structural_checks on both graphs (a check is ok only if ok for both), plus the symbolic kept dimension."""
    ours = structural_checks(detector, policy)
    theirs = structural_checks(mask_graph, policy)
    checks = {}
    for name in ours:
        problems = [f"{graph}: {checks_[name]}" for graph, checks_ in (("detector", ours), ("mask graph", theirs))
                    if checks_[name] != "ok"]
        checks[name] = "ok" if not problems else "; ".join(problems)
    frozen = kept_dims_frozen(mask_graph)
    if frozen:
        problem = f"mask graph: kept-query dimension fixed in {', '.join(frozen)}"
        checks["dynamic_dims"] = problem if checks["dynamic_dims"] == "ok" else f"{checks['dynamic_dims']}; {problem}"
    return checks


# -- verification images ---------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise PansegError(f"{folder}: no such folder of verification images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PansegError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) to verify with")
    return files


@contextlib.contextmanager
def verification_images(folder: str | os.PathLike | None, max_images: int = DEFAULT_MAX_IMAGES
                        ) -> Iterator[list[Path]]:
    """``folder``'s images, else the synthetic val images (data/synthetic/val2017, from the working directory or
    the repository), else 4 tiny synthetic images generated into a temporary folder for the duration."""
    if folder is not None:
        yield list_images(folder)[:max_images]
        return
    for candidate in (SYNTHETIC_VAL, _REPO_ROOT / SYNTHETIC_VAL):
        if candidate.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in candidate.iterdir()):
            yield list_images(candidate)[:max_images]
            return
    from train.prepare.synthetic import generate_sample

    with tempfile.TemporaryDirectory(prefix="panseg-verify-") as tmp:
        paths = []
        for index in range(max(1, min(max_images, 4))):
            path = Path(tmp) / f"synthetic_{index:03d}.png"
            Image.fromarray(generate_sample(0, "val", index, size=64).image).save(path)
            paths.append(path)
        yield paths


def _fit_into(image: Image.Image, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Resize keeping the aspect ratio to fit ``scale`` x (height, width), then normalize (static-shape graphs)."""
    factor = min(height / image.height, width / image.width) * scale
    out_h, out_w = max(1, int(image.height * factor)), max(1, int(image.width * factor))
    resized = image.resize((out_w, out_h), Image.BILINEAR)
    return preprocess(resized, size=min(out_h, out_w), max_size=None)


def _pad_to(arrays: Sequence[np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    batch, mask = pad_batch(list(arrays))
    images = np.zeros((len(arrays), 3, height, width), np.float32)
    full_mask = np.ones((len(arrays), height, width), bool)
    images[:, :, : batch.shape[2], : batch.shape[3]] = batch
    full_mask[:, : mask.shape[1], : mask.shape[2]] = mask
    return images, full_mask


@dataclass
class Batch:
    case: str
    names: list[str]
    images: np.ndarray
    mask: np.ndarray
    processed: list[tuple[int, int]]
    originals: list[tuple[int, int]]


def plan_verification(paths: Sequence[Path], policy: ShapePolicy, sizes: Sequence[int],
                      max_size_ratio: float = DEFAULT_MAX_SIZE / DEFAULT_SIZE) -> list[Batch]:
    """The batches to run: see the module docstring. Static graphs get their own batch and canvas size only."""
    pictures = [(p.name, load_image(p)) for p in paths]
    batches: list[Batch] = []

    def make(case: str, items: list[tuple[str, Image.Image, np.ndarray]]) -> Batch:
        arrays = [a for _, _, a in items]
        if policy.dynamic_size:
            images, mask = pad_batch(arrays)
        else:
            images, mask = _pad_to(arrays, policy.height, policy.width)
        return Batch(case, [n for n, _, _ in items], images, mask, [tuple(a.shape[1:]) for a in arrays],
                     [(im.height, im.width) for _, im, _ in items])

    batch_sizes = (1, 2) if policy.dynamic_batch else (policy.batch,)
    if not policy.dynamic_size:
        for n in batch_sizes:
            for start in range(0, len(pictures), n):
                group = [pictures[(start + k) % len(pictures)] for k in range(n)]
                items = [(name, im, _fit_into(im, policy.height, policy.width, 1.0 if k == 0 else 0.75))
                         for k, (name, im) in enumerate(group)]
                batches.append(make(f"{policy.height}x{policy.width} b{n}", items))
        return batches

    for size in sizes:
        max_size = int(round(size * max_size_ratio))
        full = [(name, im, preprocess(im, size, max_size)) for name, im in pictures]
        for b in batch_sizes:
            if b == 1:
                batches.extend(make(f"{size} b1", [item]) for item in full)
                continue
            small = max(8, (3 * size) // 4)
            for start in range(0, len(full), b):
                group = [full[(start + k) % len(full)] for k in range(b)]
                # later images at a smaller size, so the batch is always padded
                items = [group[0]] + [(name, im, preprocess(im, small, int(round(small * max_size_ratio))))
                                      for name, im, _ in group[1:]]
                batches.append(make(f"{size} b{b}", items))
    return batches


# -- comparisons -----------------------------------------------------------------------------------------------------


def output_error(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputError:
    if got.shape != ref.shape:
        return OutputError(float("inf"), float("inf"), 0.0, False)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_abs) or np.isnan(diff).any():
        max_abs = float("inf")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputError(max_abs, max_rel, scale, max_abs <= atol + rtol * scale)


def compare_panoptic(a: PanopticResult, b: PanopticResult) -> tuple[float, bool]:
    """(fraction of pixels in corresponding segments, same segments one-to-one with the same categories).

    Each segment of ``a`` corresponds to the segment (or VOID) of ``b`` it overlaps most; ids themselves may differ.
    """
    if a.id_map.shape != b.id_map.shape:
        return 0.0, False
    ids_a, inv_a = np.unique(a.id_map, return_inverse=True)
    ids_b, inv_b = np.unique(b.id_map, return_inverse=True)
    overlap = np.zeros((ids_a.size, ids_b.size), np.int64)
    np.add.at(overlap, (inv_a.ravel(), inv_b.ravel()), 1)
    partner = ids_b[overlap.argmax(1)]
    agreement = float((partner[inv_a.ravel()] == b.id_map.ravel()).mean()) if a.id_map.size else 1.0
    cat_a = {s["id"]: s["category_id"] for s in a.segments_info}
    cat_b = {s["id"]: s["category_id"] for s in b.segments_info}
    mapping = dict(zip(ids_a.tolist(), partner.tolist(), strict=True))
    same = (len(cat_a) == len(cat_b) and all(i in mapping for i in cat_a)
            and len({mapping[i] for i in cat_a}) == len(cat_a)
            and all(cat_b.get(mapping[i]) == c for i, c in cat_a.items()))
    return agreement, bool(same)


# -- running ---------------------------------------------------------------------------------------------------------


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_batch(batch: Batch, wrapper: FullModel, session, is_thing: Mapping[int, bool], tol: Tolerances,
              threshold: float) -> Run:
    names = list(wrapper.output_names)
    started = time.perf_counter()
    with torch.no_grad():
        eager_t = wrapper(torch.from_numpy(batch.images), torch.from_numpy(batch.mask))
    eager_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    got = session.run(names, {"images": batch.images, "padding_mask": batch.mask})
    ort_ms = (time.perf_counter() - started) * 1e3
    eager = [t.numpy() for t in eager_t]
    errors = {n: output_error(g, r, tol.atol(n), tol.rtol) for n, g, r in zip(names, got, eager, strict=True)}
    run = Run(batch.case, list(batch.images.shape), batch.names, errors, eager_ms=eager_ms, onnxruntime_ms=ort_ms)
    if "pred_masks" in names:
        outputs = dict(zip(names, eager, strict=True))
        ref = postprocess_panoptic(outputs["pred_logits"], outputs["pred_masks"], batch.processed, batch.originals,
                                   is_thing, threshold=threshold)
        ours = postprocess_panoptic(got[0], got[2], batch.processed, batch.originals, is_thing, threshold=threshold)
        for r, o in zip(ref, ours, strict=True):
            agreement, same = compare_panoptic(r, o)
            run.pixel_agreement.append(agreement)
            run.same_segments.append(same)
            run.segments.append(len(r.segments_info))
    run.passed = (all(e.passed for e in errors.values())
                  and all(p >= tol.min_pixel_agreement for p in run.pixel_agreement)
                  and (not tol.same_segments or all(run.same_segments)))
    return run


def _runner(session) -> Any:
    """An ONNX Runtime session as runtime.sparse's RunGraph: (feeds, output names) -> {name: array}."""
    def run(feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))
    return run


def run_sparse_batch(batch: Batch, wrapper: FullModel, detector_session, mask_session, is_thing: Mapping[int, bool],
                     tol: Tolerances, threshold: float) -> Run:
    """The full eager model vs the query-sparse pipeline on ONNX Runtime, on the same padded batch."""
    started = time.perf_counter()
    with torch.no_grad():
        eager_t = wrapper(torch.from_numpy(batch.images), torch.from_numpy(batch.mask))
    eager_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    sparse = run_query_sparse(_runner(detector_session), _runner(mask_session),
                              {"images": batch.images, "padding_mask": batch.mask}, threshold)
    ort_ms = (time.perf_counter() - started) * 1e3
    logits, boxes, masks = (t.numpy() for t in eager_t)
    eager_keep = [select_queries(image_logits, threshold)[0] for image_logits in logits]
    same_kept = [bool(np.array_equal(a, b.indices)) for a, b in zip(eager_keep, sparse.kept, strict=True)]
    errors = {"pred_logits": output_error(sparse.pred_logits, logits, tol.logits_atol, tol.rtol),
              "pred_boxes": output_error(sparse.pred_boxes, boxes, tol.boxes_atol, tol.rtol)}
    if all(same_kept):
        got = np.concatenate([k.masks for k in sparse.kept])
        ref = np.concatenate([m[k] for m, k in zip(masks, eager_keep, strict=True)])
        error = output_error(got, ref, tol.masks_atol, tol.rtol)
        # rtol relative to the scale of all eager masks, as the full graph's check (the kept rows may be fewer)
        error.passed = error.max_abs <= tol.masks_atol + tol.rtol * float(np.abs(masks).max(initial=0.0))
        errors["pred_masks"] = error
    else:
        errors["pred_masks"] = OutputError(float("inf"), float("inf"), 0.0, False)
    run = Run(batch.case, list(batch.images.shape), batch.names, errors, eager_ms=eager_ms, onnxruntime_ms=ort_ms,
              kept=[int(k.size) for k in eager_keep], same_kept=same_kept)
    ref_results = postprocess_panoptic(logits, masks, batch.processed, batch.originals, is_thing, threshold=threshold)
    ours = [segment_kept(kept, size, original, is_thing)
            for kept, size, original in zip(sparse.kept, batch.processed, batch.originals, strict=True)]
    for r, o in zip(ref_results, ours, strict=True):
        agreement, same = compare_panoptic(r, o)
        run.pixel_agreement.append(agreement)
        run.same_segments.append(same)
        run.segments.append(len(r.segments_info))
    run.passed = (all(e.passed for e in errors.values()) and all(same_kept)
                  and all(p >= tol.min_pixel_agreement for p in run.pixel_agreement)
                  and (not tol.same_segments or all(run.same_segments)))
    return run


def verify_sparse(detector: onnx.ModelProto, detector_bytes: bytes, mask_graph: onnx.ModelProto, mask_bytes: bytes,
                  torch_model: torch.nn.Module, policy: ShapePolicy, is_thing: Mapping[int, bool],
                  image_folder: str | os.PathLike | None = None, sizes: Sequence[int] = DEFAULT_SIZES,
                  max_images: int = DEFAULT_MAX_IMAGES, tolerances: Tolerances | None = None,
                  threshold: float = DEFAULT_THRESHOLD, progress: bool = True) -> Report:
    """As :func:`verify`, for a query-sparse pair against the full eager model (see the module docstring)."""
    tol = tolerances or Tolerances()
    report = Report(tolerances=asdict(tol))
    report.checks = sparse_structural_checks(detector, mask_graph, policy)
    wrapper = FullModel(torch_model, panoptic=True).eval()
    detector_session, mask_session = _session(detector_bytes), _session(mask_bytes)
    with verification_images(image_folder, max_images) as paths:
        batches = plan_verification(paths, policy, sizes)
        for batch in tqdm(batches, desc="verify", unit="batch", disable=not progress, leave=False):
            report.runs.append(run_sparse_batch(batch, wrapper, detector_session, mask_session, is_thing, tol,
                                                threshold))
    _conclude(report)
    return report


def _conclude(report: Report) -> None:
    report.problems = [f"{k}: {v}" for k, v in report.checks.items() if v != "ok"]
    failed = [r for r in report.runs if not r.passed]
    if failed:
        report.problems.append(f"{len(failed)} of {len(report.runs)} runs beyond tolerance (first: {failed[0].case} "
                               f"{', '.join(failed[0].images)})")
    report.verdict = "PASSED" if not report.problems else "FAILED"


def verify(model: onnx.ModelProto, model_bytes: bytes, torch_model: torch.nn.Module, panoptic: bool,
           policy: ShapePolicy, is_thing: Mapping[int, bool], image_folder: str | os.PathLike | None = None,
           sizes: Sequence[int] = DEFAULT_SIZES, max_images: int = DEFAULT_MAX_IMAGES,
           tolerances: Tolerances | None = None, threshold: float = DEFAULT_THRESHOLD,
           progress: bool = True) -> Report:
    """Run every check; the report's verdict is PASSED only if all pass."""
    tol = tolerances or Tolerances()
    report = Report(tolerances=asdict(tol))
    report.checks = structural_checks(model, policy)
    wrapper = FullModel(torch_model, panoptic).eval()
    session = _session(model_bytes)
    with verification_images(image_folder, max_images) as paths:
        batches = plan_verification(paths, policy, sizes)
        for batch in tqdm(batches, desc="verify", unit="batch", disable=not progress, leave=False):
            report.runs.append(run_batch(batch, wrapper, session, is_thing, tol, threshold))
    _conclude(report)
    return report


# -- presentation ----------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.1e}" if np.isfinite(x) else "inf"


def format_table(report: Report) -> str:
    """One row per case (size and batch), the worst error over its runs, then one verdict line."""
    lines = [f"check {name}: {status}" for name, status in report.checks.items()]
    cases: dict[str, list[Run]] = {}
    for run in report.runs:
        cases.setdefault(run.case, []).append(run)
    outputs = list(report.runs[0].errors) if report.runs else []
    header = f"{'case':<14}{'runs':>5}  " + "".join(f"{_OUTPUT_KEY[o] + ' abs/rel':<20}" for o in outputs)
    if "pred_masks" in outputs:
        header += f"{'pixels':>8}{'same segs':>11}{'segs':>6}"
    sparse = any(r.same_kept for r in report.runs)
    if sparse:
        header += f"{'kept':>6}{'same kept':>11}"
    header += f"{'eager ms':>10}{'ort ms':>9}  ok"
    lines.append(header)
    for case, runs in cases.items():
        row = f"{case:<14}{len(runs):>5}  "
        for o in outputs:
            worst_abs = max(r.errors[o].max_abs for r in runs)
            worst_rel = max(r.errors[o].max_rel for r in runs)
            row += f"{_fmt(worst_abs) + '/' + _fmt(worst_rel):<20}"
        if "pred_masks" in outputs:
            pixels = min((p for r in runs for p in r.pixel_agreement), default=1.0)
            same = sum(s for r in runs for s in r.same_segments)
            total = sum(len(r.same_segments) for r in runs)
            segs = sum(s for r in runs for s in r.segments)
            row += f"{pixels:>8.4f}{f'{same}/{total}':>11}{segs:>6}"
        if sparse:
            kept = sum(k for r in runs for k in r.kept)
            same_kept = sum(s for r in runs for s in r.same_kept)
            row += f"{kept:>6}{f'{same_kept}/{sum(len(r.same_kept) for r in runs)}':>11}"
        eager = sum(r.eager_ms for r in runs) / len(runs)
        ort_ms = sum(r.onnxruntime_ms for r in runs) / len(runs)
        row += f"{eager:>10.1f}{ort_ms:>9.1f}  {'yes' if all(r.passed for r in runs) else 'NO'}"
        lines.append(row)
    lines.append(verdict_line(report))
    return "\n".join(lines)


def verdict_line(report: Report) -> str:
    n_images = sum(len(r.images) for r in report.runs)
    if report.passed:
        return f"verification PASSED ({len(report.runs)} runs, {n_images} images)"
    return f"verification FAILED: {'; '.join(report.problems)}"
