"""Serving an exported model with NVIDIA Triton Inference Server (no torch here either).

``protocol``: the served model's tensor names and config parameters (what the repository, the model and the client
share); ``service``: bytes in, panoptic PNG + segments_info out, through the runtime's own pipeline (testable
without Triton); ``triton_model``: the Python-backend model that wraps it; ``native``: its model when the graphs are
other Triton models (the native repository, through ``runtime.backends.triton_bls``); ``server``: getting and
starting a tritonserver; ``client``: sending images and writing the answers as ``panseg-rt infer`` does.
"""
