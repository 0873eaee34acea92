"""The README.md written into a model repository: how to start the server on it and how to ask it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from export.triton.config import ModelConfig
from export.triton.native import GraphModelConfig
from runtime.serving.protocol import IMAGE, MODEL_NAME, NMS_IOU, PANOPTIC_PNG, SEGMENTS_INFO, THRESHOLD


def _python_variant(repository: Path, config: ModelConfig, batching: str) -> str:
    sharing = ("" if config.instances == 1 or config.kind != "cpu" else
               "\nThe instances share the machine's physical cores (ONNX Runtime threads per instance: cores / "
               "instances,\nunless the export was given --threads), and their threads do not spin between runs.\n")
    return f"""Written by `python -m export.triton`. One model, `{MODEL_NAME}` (Triton's Python backend): \
{config.instances} instance(s) of kind {config.kind.upper()}, {batching}. It runs panseg's runtime (copied into the
version folder) on the engine files in `{MODEL_NAME}/<version>/engine/`; its answers are byte-identical to
`panseg-rt infer`.
{sharing}
## Start the server

    panseg-rt serve {repository} --http-port 8000

(without --http-port it picks free ports; it prints the URLs. On first use it downloads and unpacks Triton 2.51
from the `nvidia-pytriton` wheel into the panseg cache, with the Python 3.11 execution environment named by
`EXECUTION_ENV_PATH` in `{MODEL_NAME}/config.pbtxt`.) With your own tritonserver:

    tritonserver --model-repository {repository} --backend-directory <folder with python/ and its 3.11 stub>
"""


def _native_variant(repository: Path, config: ModelConfig, batching: str,
                    graphs: Mapping[str, GraphModelConfig]) -> str:
    listed = "\n".join(f"* `{g.name}`: platform `{g.platform}` (`{g.name}/<version>/{g.model_file}`),\n  "
                       f"{g.instances} instance(s) of kind {g.kind.upper()}, max_batch_size {g.max_batch_size}"
                       for g in graphs.values())
    return f"""Written by `python -m export.triton --engines native`. The graphs run in Triton's own backends:

{listed}

`{MODEL_NAME}` (Triton's Python backend, {config.instances} instance(s) of kind CPU,
{batching}) runs panseg's runtime, copied into its version folder: decode, preprocess, query selection and the
panoptic merge. It calls the
graph models through BLS; their tensors are described in `{MODEL_NAME}/<version>/graphs.json`. Clients ask only
`{MODEL_NAME}`.

**Not run by panseg's tests:** the `onnxruntime_onnx` / `tensorrt_plan` models (no GPU, and no such backend in the
server the tests use). What ran is the BLS plumbing, with Python-backend stand-ins running the same ONNX files
behind the same config inputs and outputs; their answers were byte-identical to `panseg-rt infer`.

## Start the server

`panseg-rt serve`'s bundled server has the python backend only. Use a Triton server with the python and the
onnxruntime (or tensorrt) backends, e.g. NVIDIA's `nvcr.io/nvidia/tritonserver:<version>-py3` image:

    tritonserver --model-repository {repository} --http-port 8000

`EXECUTION_ENV_PATH` in `{MODEL_NAME}/config.pbtxt` (`--execution-env` of the export) must name an environment on
that server whose Python matches its Python backend stub, with numpy<2 and Pillow.
"""


def render_readme(repository: Path, config: ModelConfig, graphs: Mapping[str, GraphModelConfig] | None = None) -> str:
    batching = (f"dynamic batching up to {config.max_batch_size} images (queue delay {config.queue_delay_us} us)"
                if config.dynamic_batching else f"no dynamic batching (max_batch_size {config.max_batch_size})")
    about = (_native_variant(repository, config, batching, graphs) if graphs
             else _python_variant(repository, config, batching))
    return f"""# panseg model repository

{about}
## Ask it

    panseg-rt request 127.0.0.1:8000 photo.jpg more/*.jpg -o out/

writes `out/panoptic/<stem>.png` and `out/predictions.json` as `panseg-rt infer` does. With `tritonclient[http]`:

```python
import json
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient("127.0.0.1:8000")
image = http.InferInput("{IMAGE}", [1, 1], "BYTES")
image.set_data_from_numpy(np.array([[open("photo.jpg", "rb").read()]], dtype=object))
threshold = http.InferInput("{THRESHOLD}", [1, 1], "FP32")  # optional, also {NMS_IOU}
threshold.set_data_from_numpy(np.array([[0.85]], dtype=np.float32))
result = client.infer("{MODEL_NAME}", [image, threshold])
png = result.as_numpy("{PANOPTIC_PNG}")[0, 0]  # bytes of the COCO panoptic PNG
segments_info = json.loads(result.as_numpy("{SEGMENTS_INFO}")[0, 0])
```

A bad image (empty, not an image, truncated, too many pixels) or a bad setting gets an error naming the problem for
that request only.
"""
