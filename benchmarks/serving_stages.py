"""What the served model's stub does per request, stage by stage, timed in this process without Triton.

The stub runs ``PanopticService.segment``: the request's bytes to a scratch file, decode + preprocess, the engine,
the panoptic merge, the PNG and the segments_info JSON. Here the same stages run one request at a time on the same
engine options, each timed in CPU milliseconds of this process (the engine's pool threads included: a pool that
spins after a run shows its spinning in the stages after the engine). Set against the stubs' CPU per request in the
server, the difference is what the Python backend adds (its IPC and request handling).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.atomic import dumps_json
from runtime.outputs import ImageJob
from runtime.pipeline import Pipeline
from runtime.serving.service import ImageRequest, PanopticService, encode_panoptic_png

STAGES = ("decode_preprocess", "engine", "merge", "png", "json")


def stage_cpu_ms(model: Path, files: Sequence[Path], backend: dict[str, Any], size: int | None,
                 threshold: float | None) -> dict[str, float]:
    """Mean CPU ms per request of each stage (``STAGES``) and of the whole ``PanopticService.segment`` call."""
    totals = dict.fromkeys((*STAGES, "service"), 0.0)
    with PanopticService(model, backend_options=backend, size=size) as service:
        options = service.options_for(ImageRequest(b"", threshold))
        pipeline = Pipeline(service.model, options)
        requests = [ImageRequest(f.read_bytes(), threshold) for f in files]
        service.segment(requests[:1])  # warm-up
        for request, path in zip(requests, files, strict=True):
            started = time.process_time()
            service.segment([request])
            totals["service"] += time.process_time() - started
            clock = time.process_time()

            def lap(stage: str) -> None:
                nonlocal clock
                now = time.process_time()
                totals[stage] += now - clock
                clock = now

            batch = pipeline.prepare([ImageJob(path, 0, "0.png")])
            lap("decode_preprocess")
            kept = pipeline.run_engine(batch)
            lap("engine")
            result = pipeline.postprocess(kept[0], batch.processed[0], batch.original[0])
            lap("merge")
            encode_panoptic_png(result.id_map)
            lap("png")
            dumps_json(result.segments_info)
            lap("json")
    return {f"{k}_ms": round(1000 * v / len(files), 2) for k, v in totals.items()}
