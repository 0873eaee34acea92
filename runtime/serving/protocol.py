"""The served model's interface: tensor names, parameter keys and limits shared by the model repository, the model
running inside Triton and the client, so that none of them spells a name on its own."""

from __future__ import annotations

MODEL_NAME = "panseg"

# inputs (per image: the batch dimension is Triton's)
IMAGE = "IMAGE"  # TYPE_STRING: the encoded image file's bytes (JPEG, PNG, ...)
THRESHOLD = "THRESHOLD"  # TYPE_FP32, optional: keep queries above this class probability (default: the model's)
NMS_IOU = "NMS_IOU"  # TYPE_FP32, optional: box NMS among things (default: off, as detr)

# outputs (per image)
PANOPTIC_PNG = "PANOPTIC_PNG"  # TYPE_STRING: the COCO panoptic PNG, the bytes panseg-rt infer writes
SEGMENTS_INFO = "SEGMENTS_INFO"  # TYPE_STRING: the image's segments_info as JSON text (COCO panoptic)

# config.pbtxt parameters read by the model (string values)
PARAM_ENGINE = "engine"  # the engine file name inside the version folder's engine/ folder
PARAM_BACKEND = "backend"  # runtime backend name, or "" for "by file type"
PARAM_SIZE = "size"  # resize: shorter side ("" = the model's)
PARAM_MAX_SIZE = "max_size"  # resize: longer side limit ("" = the model's, "none" = no limit)
PARAM_THREADS = "threads"  # ONNX Runtime intra-op threads per instance ("" = one per physical core)
PARAM_CATEGORIES = "categories"  # the model's categories as COCO JSON, for clients writing predictions.json
PARAM_ENGINES = "engines"  # where the graphs run: ENGINES_PYTHON or ENGINES_NATIVE ("" = python)
EXECUTION_ENV_PATH = "EXECUTION_ENV_PATH"  # Triton's Python backend: the environment its stub runs in

ENGINE_DIR = "engine"  # inside the version folder

# Where the graphs run. python: inside the panseg model (ONNX Runtime or TensorRT in its own process). native: each
# graph is its own Triton model in Triton's onnxruntime_onnx / tensorrt_plan backend, called by the panseg model
# through BLS; the panseg model's version folder then holds GRAPHS_FILE instead of engine/.
ENGINES_PYTHON = "python"
ENGINES_NATIVE = "native"
ENGINES = (ENGINES_PYTHON, ENGINES_NATIVE)
GRAPHS_FILE = "graphs.json"  # role ("detector", "masks"; "model" for a single graph) -> the graph's description


def graph_model_name(role: str) -> str:
    """The Triton model serving one graph of the native variant: ``panseg_detector``, ``panseg_masks``."""
    return f"{MODEL_NAME}_{role}"
