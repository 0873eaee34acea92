"""Reduced-precision variants of an exported model: FP16 and INT8 (QDQ), calibrated, verified against fp32, gated.

``python -m export.precision MODEL.onnx --precision fp16|int8 -o OUT.onnx`` (see __main__.py for why a separate step).
Pieces, one job each: blocks.py (which block of DETR a node is in), calibration.py (calibration feeds, the ranges
cache), int8.py (the two INT8 flavours and quantize_static), fp16.py (float16 with float32 islands),
sensitivity.py (the measured choice of blocks kept in float), agreement.py (variant vs fp32: errors, agreement, PQ),
variant.py (writing the graph(s) with their metadata).
"""
