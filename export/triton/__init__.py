"""``python -m export.triton MODEL -o REPO``: a Triton Inference Server model repository serving an exported model.

``config``: the config.pbtxt text; ``repository``: the folder (engine files, the runtime's code, model.py, README);
``native``: with ``--engines native``, the graph models for Triton's onnxruntime_onnx / tensorrt_plan backends;
the model that runs inside Triton is ``runtime.serving.triton_model`` (torch-free, copied into the repository).
"""

from export.triton.config import ModelConfig, render_config
from export.triton.repository import RepositoryResult, write_repository

__all__ = ["ModelConfig", "RepositoryResult", "render_config", "write_repository"]
