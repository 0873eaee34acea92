"""The export command's defaults, in a module that imports nothing heavy.

``python -m export.onnx`` builds its parser (and shows them in ``--help``) before importing torch or onnx, so it can
refuse a file that is not a checkpoint at once; graph.py and verify/ read the same values from here.
"""

from __future__ import annotations

DEFAULT_OPSET = 17  # TensorRT maps LayerNormalization (opset 17) to its normalization layer

# verification: shorter sides to verify at, and how many of the caller's images
DEFAULT_SIZES = (96, 160)
DEFAULT_MAX_IMAGES = 4

# verification tolerances (export.onnx.verify.compare.Tolerances): max_abs <= atol + rtol * max|reference|
DEFAULT_LOGITS_ATOL = 1e-3
DEFAULT_BOXES_ATOL = 1e-4
DEFAULT_MASKS_ATOL = 1e-2
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_PIXEL_AGREEMENT = 0.999  # near-tied masks (untrained models) may flip a few pixels
