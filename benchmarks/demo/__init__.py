"""The end-to-end demo (``python -m benchmarks.demo``; the orchestrator is __main__.py): stages.py (the stages as
records and the rule that reuses them), summary.py (summary.md/json from the stages' files), training_curve.py
(PQ against training minutes). It lives under benchmarks because its last stage is the latency benchmark."""
