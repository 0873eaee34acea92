"""Serving with a real Triton Inference Server: the model repository, ``panseg-rt serve``/``request``, answers
byte-identical to ``panseg-rt infer``, load, bad payloads and a killed stub process.

The server tests (marked ``serving``; deselect with ``-m "not serving"``) start tritonserver on 127.0.0.1 with free
ports from the install in ``$PANSEG_TRITON_DIR`` or ``<venv>/triton`` (``make setup`` makes it), installing it there
if missing; they are skipped, with the reason, only when it cannot be installed. Everything else here runs without a
server.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, separable

from export.onnx import export_checkpoint
from export.triton import ModelConfig, render_config
from export.triton.__main__ import main as export_triton_main
from export.triton.config import pbtxt_string
from export.triton.repository import ServingSettings, write_repository
from runtime.categories import categories_to_json
from runtime.cli import main as runtime_main
from runtime.errors import PansegError
from runtime.infer import infer
from runtime.outputs import PANOPTIC_DIR, PREDICTIONS_FILE
from runtime.pipeline import InferOptions
from runtime.serving.client import PansegClient, request_inputs
from runtime.serving.protocol import IMAGE, MODEL_NAME, PARAM_ENGINE, PARAM_MAX_SIZE, PARAM_SIZE, PARAM_THREADS
from runtime.serving.server import TRITON_DIR_ENV, TritonInstall, TritonServer, ensure_installed, stub_processes
from runtime.serving.service import ImageRequest, PanopticService, Segmented
from runtime.serving.triton_model import engine_options, instance_count, physical_cores, service_from_parameters
from train.checkpoint import save_checkpoint
from train.prepare.synthetic import categories as synthetic_categories
from train.prepare.synthetic import generate_dataset, generate_sample

SIZE, MAX_SIZE = 64, 107  # the tiny model's evaluation size (its metadata says 800)
THREADS = 1  # two shared cores


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def model(work) -> Path:
    torch.manual_seed(3)
    checkpoint = work / "tiny.pth"
    save_checkpoint(checkpoint, {"model": separable(torch.nn.Module.eval(_tiny())).state_dict(),
                                 "config": TINY_CONFIG.to_dict(),
                                 "categories": categories_to_json(synthetic_categories())})
    return export_checkpoint(checkpoint, work / "tiny.onnx", run_verification=False, progress=False).path


def _tiny() -> torch.nn.Module:
    from train.models import build_model

    return build_model(TINY_CONFIG)


@pytest.fixture(scope="module")
def images(work) -> list[Path]:
    """Six synthetic photos (64 x 64 JPEG) and two crops of other sizes (PNG), so batches mix processed sizes."""
    root = work / "data"
    generate_dataset(root, train=1, val=6, size=64, seed=3)
    paths = sorted((root / "val2017").glob("*.jpg"))
    for index, (h, w) in enumerate([(48, 64), (64, 40)]):
        from PIL import Image

        crop = work / "crops" / f"crop{index}.png"
        crop.parent.mkdir(exist_ok=True)
        Image.fromarray(generate_sample(7, "val", index, size=96).image[:h, :w]).save(crop)
        paths.append(crop)
    return paths


def _options(**kw) -> InferOptions:
    return InferOptions(size=SIZE, max_size=MAX_SIZE, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(model, images, work) -> Path:
    """``panseg-rt infer`` (the library call) on the images: what every served answer must equal."""
    out = work / "infer"
    report = infer(model, [str(p) for p in images], out, _options(), backend_options={"intra_op_threads": THREADS})
    assert report.done == len(images)
    return out


def _reference_answers(reference: Path, images: list[Path]) -> dict[bytes, tuple[bytes, list]]:
    """image bytes -> (PNG bytes, segments_info) as infer wrote them."""
    annotations = {a["file_name"]: a for a in json.loads((reference / PREDICTIONS_FILE).read_text())["annotations"]}
    return {p.read_bytes(): ((reference / PANOPTIC_DIR / f"{p.stem}.png").read_bytes(),
                             annotations[f"{p.stem}.png"]["segments_info"]) for p in images}


@pytest.fixture(scope="module")
def install() -> TritonInstall:
    """The server install (``$PANSEG_TRITON_DIR``, else ``<venv>/triton``), made there if missing."""
    pytest.importorskip("tritonclient.http", reason="the serving tests need tritonclient[http] (the serve extra)")
    root = Path(os.environ.get(TRITON_DIR_ENV) or Path(sys.prefix) / "triton")
    try:
        return ensure_installed(TritonInstall(root))
    except PansegError as exc:
        pytest.skip(f"Triton server cannot be installed on this machine: {exc}")


@pytest.fixture(scope="module")
def repository(model, work, install) -> Path:
    settings = ServingSettings(size=SIZE, max_size=MAX_SIZE, threads=THREADS,
                               config=ModelConfig(max_batch_size=8, instances=1,
                                                  execution_env=str(install.execution_env)))
    return write_repository(model, work / "repository", settings).repository


@pytest.fixture(scope="module")
def server(repository, install, work):
    with TritonServer(repository, install, log_path=work / "server.log") as running:
        yield running


@pytest.fixture
def client(server):
    with PansegClient(server.url, concurrency=8) as connection:
        yield connection


# --------------------------------------------------------------------------------------------- without a server


def test_config_says_batching_instances_versions_and_quotes_values():
    config = ModelConfig(max_batch_size=4, dynamic_batching=True, queue_delay_us=250, instances=3, kind="gpu",
                         keep_versions=2, execution_env="/env", parameters={"categories": 'a "b" \\ c\nd'})
    text = render_config(config)
    assert "max_batch_size: 4" in text
    assert "dynamic_batching { max_queue_delay_microseconds: 250 }" in text
    assert "instance_group [ { count: 3 kind: KIND_GPU } ]" in text
    assert "version_policy: { latest: { num_versions: 2 } }" in text
    assert '{ key: "EXECUTION_ENV_PATH" value: { string_value: "/env" } }' in text
    assert pbtxt_string('a "b" \\ c\nd') == r'"a \"b\" \\ c\nd"'
    assert "dynamic_batching" not in render_config(ModelConfig(dynamic_batching=False))
    with pytest.raises(ValueError, match="instance kind"):
        render_config(ModelConfig(kind="tpu"))


def test_export_writes_a_self_contained_repository_and_refuses_to_overwrite(model, work, capsys):
    out = work / "cli_repository"
    args = [str(model), "-o", str(out), "--size", "64", "--max-size", "107", "--instances", "2",
            "--no-dynamic-batching", "--execution-env", "/somewhere/env"]
    assert export_triton_main(args) == 0
    version = out / MODEL_NAME / "1"
    assert sorted(p.name for p in (version / "engine").iterdir()) == ["tiny.masks.onnx", "tiny.onnx"]
    assert (version / "engine" / "tiny.onnx").read_bytes() == model.read_bytes()
    assert (version / "runtime" / "serving" / "triton_model.py").is_file()
    assert "TritonPythonModel" in (version / "model.py").read_text()
    config = (out / MODEL_NAME / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in config and "dynamic_batching" not in config
    assert "panseg-rt serve" in (out / "README.md").read_text()
    assert export_triton_main(args) == 1
    assert f"{version}: exists" in capsys.readouterr().err


def test_export_defaults_two_cpu_instances_without_queue_delay_and_one_gpu_instance(model, work):
    out = work / "default_repository"
    assert export_triton_main([str(model), "-o", str(out), "--execution-env", "/env"]) == 0
    config = (out / MODEL_NAME / "config.pbtxt").read_text()
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in config
    assert "dynamic_batching { max_queue_delay_microseconds: 0 }" in config
    readme = (out / "README.md").read_text()
    assert "2 instance(s) of kind CPU" in readme and "The instances share the machine's physical cores" in readme
    gpu = work / "gpu_repository"
    assert export_triton_main([str(model), "-o", str(gpu), "--kind", "gpu", "--execution-env", "/env"]) == 0
    assert "count: 1 kind: KIND_GPU" in (gpu / MODEL_NAME / "config.pbtxt").read_text()


def test_instances_share_the_cores_and_stop_spinning_unless_threads_are_given():
    assert engine_options("", 1) == {}  # one instance: ONNX Runtime's default, as panseg-rt infer
    assert engine_options("", 2, cores=8) == {"intra_op_threads": 4, "allow_spinning": False}
    assert engine_options("", 3, cores=2) == {"intra_op_threads": 1, "allow_spinning": False}
    assert engine_options("3", 2, cores=8) == {"intra_op_threads": 3, "allow_spinning": False}
    assert engine_options("2", 1) == {"intra_op_threads": 2}
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert instance_count({"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}]}) == 3
    assert instance_count({}) == 1


def test_a_second_instance_loads_its_engine_with_shared_cores_and_answers_like_infer(model, images, reference,
                                                                                       work):
    """What ``TritonPythonModel.initialize`` builds for one of two instances, on a real repository's version folder."""
    settings = ServingSettings(size=SIZE, max_size=MAX_SIZE, config=ModelConfig(instances=2))
    version = write_repository(model, work / "two_instances", settings).version_dir
    params = {PARAM_ENGINE: model.name, PARAM_SIZE: str(SIZE), PARAM_MAX_SIZE: str(MAX_SIZE), PARAM_THREADS: ""}
    with service_from_parameters(version, params, 8, instances=2) as service:
        detector = service.model.detector
        assert detector.intra_op_threads == max(1, physical_cores() // 2)
        assert detector.allow_spinning is False and service.model.masks.allow_spinning is False
        answer = service.segment([ImageRequest(images[0].read_bytes())])[0]
    assert isinstance(answer, Segmented), answer
    if detector.intra_op_threads == THREADS:  # the reference ran with THREADS; other counts may round differently
        assert (answer.png, json.loads(answer.segments_info)) == _reference_answers(reference, images[:1])[
            images[0].read_bytes()]


def test_benchmark_times_each_stage_the_stub_runs(model, images):
    from benchmarks.serving_stages import STAGES, stage_cpu_ms

    ms = stage_cpu_ms(model, images[:3], {"intra_op_threads": THREADS}, SIZE, 0.0)
    assert set(ms) == {f"{s}_ms" for s in (*STAGES, "service")}
    assert ms["engine_ms"] > 0 and ms["service_ms"] > 0 and min(ms.values()) >= 0


def test_service_answers_like_infer_and_names_bad_images(model, images, reference):
    expected = _reference_answers(reference, images)
    with PanopticService(model, backend_options={"intra_op_threads": THREADS}, size=SIZE, max_size=MAX_SIZE) as svc:
        answers = svc.segment([ImageRequest(p.read_bytes()) for p in images] + [ImageRequest(b"")])
        assert list(svc._scratch.iterdir()) == []  # every request's scratch file is gone, the failed one's too
    for path, answer in zip(images, answers, strict=False):
        assert isinstance(answer, Segmented), answer
        assert (answer.png, json.loads(answer.segments_info)) == expected[path.read_bytes()]
    assert answers[-1] == "the request image: empty file (0 bytes), not an image"


# --------------------------------------------------------------------------------------------- a real server


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header says RGB ``width`` x ``height`` but which holds a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def _send_int32_image(client: PansegClient) -> None:
    import tritonclient.http as http

    tensor = http.InferInput(IMAGE, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[7]], dtype=np.int32))
    client.client.infer(MODEL_NAME, [tensor])


BAD_PAYLOADS = {
    "empty bytes": (lambda c, jpg: c.segment(b""), "empty file (0 bytes)"),
    "not an image": (lambda c, jpg: c.segment(b"hello, not an image" * 10), "not an image"),
    "truncated jpeg": (lambda c, jpg: c.segment(jpg[: len(jpg) * 2 // 3]), "truncated"),
    "png header claiming 30000x30000": (lambda c, jpg: c.segment(_png_header_claiming(30000, 30000)),
                                        "decompression bomb (Image size (900000000 pixels)"),
    "wrong tensor type": (lambda c, jpg: _send_int32_image(c), "data-type is 'INT32', but model 'panseg' expects"),
    "threshold above 1": (lambda c, jpg: c.segment(jpg, threshold=1.5), "threshold must be in [0, 1), got 1.5"),
    "threshold below 0": (lambda c, jpg: c.segment(jpg, threshold=-0.2), "threshold must be in [0, 1), got -0.2"),
    "nms iou of 0": (lambda c, jpg: c.segment(jpg, nms_iou=0.0), "NMS IoU threshold must be in (0, 1]"),
}


@pytest.mark.serving
def test_request_command_writes_what_infer_writes(server, images, reference, work, capsys):
    out = work / "requested"
    assert runtime_main(["request", server.url, *map(str, images), "-o", str(out), "--concurrency", "3"]) == 0
    for path in images:
        name = f"{path.stem}.png"
        assert (out / PANOPTIC_DIR / name).read_bytes() == (reference / PANOPTIC_DIR / name).read_bytes()
    assert (out / PREDICTIONS_FILE).read_bytes() == (reference / PREDICTIONS_FILE).read_bytes()
    assert f"({len(images)} images)" in capsys.readouterr().out


@pytest.mark.serving
def test_threshold_and_nms_settings_are_applied_as_infer_applies_them(client, model, images, work):
    out = work / "infer_settings"
    infer(model, [str(p) for p in images], out, _options(threshold=0.5, nms_iou=0.3),
          backend_options={"intra_op_threads": THREADS})
    expected = _reference_answers(out, images)
    for path in images:
        answer = client.segment(path.read_bytes(), threshold=0.5, nms_iou=0.3)
        assert (answer.png, answer.segments_info) == expected[path.read_bytes()]


def _metric(server: TritonServer, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(f"{name}{{") and f'model="{MODEL_NAME}"' in line)


@pytest.mark.serving
def test_200_requests_at_concurrency_8_all_answer_as_infer_does(client, server, images, reference):
    expected = _reference_answers(reference, images)
    payloads = [images[k % len(images)].read_bytes() for k in range(200)]
    executions_before = _metric(server, "nv_inference_exec_count")
    requests_before = _metric(server, "nv_inference_count")
    answers = client.segment_many(payloads)
    errors = [a for a in answers if isinstance(a, str)]
    assert errors == []
    assert all((a.png, a.segments_info) == expected[p] for a, p in zip(answers, payloads, strict=True))
    executions = _metric(server, "nv_inference_exec_count") - executions_before
    assert _metric(server, "nv_inference_count") - requests_before == 200
    assert executions < 200  # the dynamic batcher joined concurrent requests into model calls


@pytest.mark.serving
def test_two_instances_answer_concurrent_requests_as_infer_does(model, images, reference, install, work):
    """export.triton's CPU default: two instances, no queue delay. Both stubs run, and concurrent answers (spread
    over both instances, some batched) are infer's bytes."""
    settings = ServingSettings(size=SIZE, max_size=MAX_SIZE, threads=THREADS,
                               config=ModelConfig(instances=2, execution_env=str(install.execution_env)))
    repository = write_repository(model, work / "repository-two", settings).repository
    expected = _reference_answers(reference, images)
    payloads = [p.read_bytes() for p in images] * 2
    with TritonServer(repository, install, log_path=work / "server-two.log") as server:
        assert sum(stub_processes(server.process.pid).values()) == 2
        with PansegClient(server.url, concurrency=4) as own:
            answers = own.segment_many(payloads)
    assert [a for a in answers if isinstance(a, str)] == []
    assert [(a.png, a.segments_info) for a in answers] == [expected[p] for p in payloads]


@pytest.mark.serving
@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_gets_its_own_error_and_the_next_request_succeeds(case, client, images, reference):
    send, message = BAD_PAYLOADS[case]
    good = images[0].read_bytes()
    with pytest.raises(Exception) as raised:  # noqa: B017 - tritonclient's InferenceServerException
        send(client, good)
    text = str(raised.value)
    assert message in text
    assert "panseg-serve-" not in text  # names the request's image, not the server's scratch file
    answer = client.segment(good)
    assert (answer.png, answer.segments_info) == _reference_answers(reference, images[:1])[good]


KILLED_STUB = "Stub process 'panseg_0_0' is not healthy"
RELOADING = "Request for unknown model: 'panseg' has no available versions"


def _assert_reloaded_and_answering(server, good: bytes, expected) -> None:
    """Within a minute the watchdog has reloaded the model once, and a new request gets the right answer."""
    deadline = time.monotonic() + 60
    while server.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.restarts == 1 and server.ready()
    with PansegClient(server.url) as fresh:
        answer = fresh.segment(good)
    assert (answer.png, answer.segments_info) == expected


@pytest.mark.serving
def test_killed_stub_fails_inflight_requests_then_the_model_is_reloaded(repository, install, images, reference,
                                                                        work):
    """What a client sees when the model's process dies mid-run, and that the server recovers (its watchdog)."""
    good = images[0].read_bytes()
    expected = _reference_answers(reference, images[:1])[good]
    with TritonServer(repository, install, log_path=work / "server-kill.log") as server:
        stubs = [pid for pid, alive in stub_processes(server.process.pid).items() if alive]
        assert len(stubs) == 1
        answers: list = []

        def load() -> None:
            with PansegClient(server.url, concurrency=4) as own:
                answers.extend(own.segment_many([good] * 60))

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.5)
        os.kill(stubs[0], 9)
        thread.join()
        failed = [a for a in answers if isinstance(a, str)]
        assert failed, "the killed stub's in-flight requests must fail"
        # What the client sees: the dead stub's own error, or, for requests that arrive while the watchdog reloads
        # the model (a slow machine), that the model is briefly unavailable. Nothing else, and never a wrong answer.
        assert all(KILLED_STUB in a or RELOADING in a for a in failed), set(failed)
        assert any(KILLED_STUB in a for a in failed)
        assert all((a.png, a.segments_info) == expected for a in answers if not isinstance(a, str))
        _assert_reloaded_and_answering(server, good, expected)
        assert [pid for pid, alive in stub_processes(server.process.pid).items() if alive] != stubs


@pytest.mark.serving
def test_a_stub_killed_the_moment_the_server_is_ready_is_still_noticed(repository, install, images, reference, work):
    """The watchdog's first look is taken before start() returns: a stub that dies before the watchdog's first
    interval has passed must still be reloaded (it once went unnoticed when killed within that interval)."""
    good = images[0].read_bytes()
    expected = _reference_answers(reference, images[:1])[good]
    with TritonServer(repository, install, log_path=work / "server-early-kill.log") as server:
        stubs = [pid for pid, alive in stub_processes(server.process.pid).items() if alive]
        os.kill(stubs[0], 9)  # at once, well inside WATCH_INTERVAL
        _assert_reloaded_and_answering(server, good, expected)


@pytest.mark.serving
def test_requests_outside_the_repository_answer_with_errors(client):
    with pytest.raises(Exception, match="unknown model"):  # noqa: B017
        client.client.infer("not_a_model", request_inputs(b"x"))


def test_serve_command_names_a_missing_execution_environment_before_installing(model, work, capsys):
    settings = ServingSettings(config=ModelConfig(execution_env=str(work / "no-such-env")))
    repository = write_repository(model, work / "repository-elsewhere", settings).repository
    assert runtime_main(["serve", str(repository)]) == 1
    err = capsys.readouterr().err
    assert f"EXECUTION_ENV_PATH {work / 'no-such-env'} does not exist" in err
    assert runtime_main(["serve", str(work)]) == 1
    assert f"{work}: not a panseg model repository" in capsys.readouterr().err


@pytest.mark.serving
def test_serve_command_serves_until_terminated_then_stops_the_server(repository, install, images, reference, work):
    import subprocess

    env = {**os.environ, TRITON_DIR_ENV: str(install.root)}
    serve = subprocess.Popen([sys.executable, "-m", "runtime", "serve", str(repository)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = serve.stdout.readline()
        assert "panseg-rt serve: serving" in line, line + serve.stderr.read()
        url = line.split("http://")[1].split()[0]
        out = work / "served_by_cli"
        assert runtime_main(["request", url, str(images[0]), "-o", str(out)]) == 0
        name = f"{images[0].stem}.png"
        assert (out / PANOPTIC_DIR / name).read_bytes() == (reference / PANOPTIC_DIR / name).read_bytes()
    finally:
        serve.terminate()
        code = serve.wait(60)
    assert code == 130 and "interrupted" in serve.stderr.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=5)
