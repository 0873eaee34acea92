"""The Python steps of tests/gpu/acceptance.sh (one JSON object per step on stdout). Needs a GPU, TensorRT, cuda-python
and the train/export extras; not collected by pytest (its name does not start with test_).

    python tests/gpu/acceptance.py env
    python tests/gpu/acceptance.py plumbing
    python tests/gpu/acceptance.py export OUT_DIR
    python tests/gpu/acceptance.py soak PLAN ONNX CALLS
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # conftest: the tiny model's config and the padded random batches

# Shapes the soak alternates between (batch x height x width), all inside the profile acceptance.sh builds.
SOAK_SHAPES = [[(256, 256)], [(384, 512), (320, 480)], [(512, 640)], [(320, 480)]]
LEAK_TOLERANCE = 2 << 20  # cudaMemGetInfo moves in pages; a leak of the soak's buffers would be far larger


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def env() -> dict:
    from runtime.backends.tensorrt_cuda import cuda_check, current_gpu, import_cudart

    cudart = import_cudart()
    gpu = current_gpu(cudart, 0)
    free, total = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    import tensorrt

    return {"python": platform.python_version(), "tensorrt": tensorrt.__version__,
            "cuda_python": _version("cuda-python") or _version("cuda-bindings"),
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "cuda_runtime": cuda_check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"),
            "cuda_driver": cuda_check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"),
            "gpu": gpu.name, "compute_capability": list(gpu.compute_capability),
            "memory_total_bytes": int(total), "memory_free_bytes": int(free)}


def plumbing() -> dict:
    """Pinned -> device -> pinned round trip through the backend's own Buffer and CudaResources."""
    from runtime.backends.tensorrt_cuda import Buffer, CudaResources, import_cudart

    cudart = import_cudart()
    resources = CudaResources(cudart, 0)
    data = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    up, down = Buffer(cudart, data.nbytes), Buffer(cudart, data.nbytes)
    resources.buffers.update(up=up, down=down)
    np.copyto(up.host_array(data.shape, data.dtype), data)
    resources.copy(up.device_address(), up.host, data.nbytes, "h2d", "upload")
    resources.copy(down.device_address(), up.device, data.nbytes, "d2d", "device copy")
    resources.copy(down.host_address(), down.device, data.nbytes, "d2h", "download")
    resources.synchronize()
    same = bool(np.array_equal(down.host_array(data.shape, data.dtype), data))
    problems = resources.release()
    return {"round_trip_equal": same, "transfers": resources.counter.as_dict(), "release_problems": problems,
            "ok": same and not problems}


def export(out_dir: str) -> dict:
    """A tiny random panoptic DETR exported as the query-sparse pair (and the single graph for comparison)."""
    import torch
    from conftest import TINY_CONFIG

    from export.onnx import export_checkpoint
    from runtime.categories import categories_to_json
    from train.checkpoint import save_checkpoint
    from train.models import build_model
    from train.prepare.synthetic import categories as synthetic_categories

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ckpt = folder / "tiny.pth"
    save_checkpoint(ckpt, {"model": build_model(TINY_CONFIG).state_dict(), "config": TINY_CONFIG.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    result = export_checkpoint(ckpt, folder / "tiny.onnx", run_verification=False, progress=False)
    return {"onnx": str(result.path), "mask_graph": str(result.mask_path)}


def soak(plan: str, onnx_path: str, calls: int) -> dict:
    """``calls`` PanopticModel.run calls alternating shapes: device memory before/after, transfers per image, and
    agreement with ONNX Runtime's numpy hand-off on the first batch."""
    from conftest import random_padded_batch

    from runtime.backends.tensorrt_cuda import cuda_check, import_cudart
    from runtime.model import load_model

    cudart = import_cudart()
    batches = [random_padded_batch(shapes, seed) for seed, shapes in enumerate(SOAK_SHAPES)]
    with load_model(plan) as model, load_model(onnx_path) as reference:
        pair = model.device_pair
        if pair is None:
            return {"ok": False, "error": f"{plan}: load_model did not use the device-resident pair"}
        for images, mask in batches:  # warm-up: every buffer and TensorRT's own scratch allocated
            model.run(images, mask, threshold=0.0)
        cudart.cudaDeviceSynchronize()
        free_before = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")[0]
        pair.reset_transfers()
        images_seen = input_bytes = mask_bytes = kept = 0
        started = time.perf_counter()
        for call in range(calls):
            images, mask = batches[call % len(batches)]
            out = model.run(images, mask, threshold=0.0)
            images_seen += images.shape[0]
            input_bytes += images.nbytes + mask.nbytes
            mask_bytes += sum(k.masks.nbytes for k in out.kept)
            kept += sum(out.kept_counts)
        seconds = time.perf_counter() - started
        cudart.cudaDeviceSynchronize()
        free_after = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")[0]
        traffic = pair.transfers()
        images, mask = batches[1]
        got, want = model.run(images, mask, threshold=0.0), reference.run(images, mask, threshold=0.0)
        common = [np.intersect1d(g.indices, w.indices).size / max(w.indices.size, 1)
                  for g, w in zip(got.kept, want.kept, strict=True)]
    other = traffic.crossed_bytes - input_bytes - mask_bytes
    leaked = int(free_before) - int(free_after)
    return {"calls": calls, "seconds": round(seconds, 2), "images": images_seen, "kept_queries": kept,
            "device_memory_free_before": int(free_before), "device_memory_free_after": int(free_after),
            "device_memory_lost_bytes": leaked, "transfers": traffic.as_dict(),
            "crossed_bytes_per_image_excluding_inputs_and_masks": other / max(images_seen, 1),
            "kept_overlap_with_onnxruntime": [round(c, 3) for c in common],
            "ok": leaked <= LEAK_TOLERANCE and min(common) >= 0.9}


def main(argv: list[str]) -> int:
    steps = {"env": env, "plumbing": plumbing, "export": export, "soak": soak}
    if not argv or argv[0] not in steps:
        print(__doc__, file=sys.stderr)
        return 2
    args = [int(a) if a.isdigit() else a for a in argv[1:]]
    print(json.dumps(steps[argv[0]](*args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
