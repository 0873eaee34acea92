"""File kinds from their first bytes: real files of each kind, written by the libraries that make them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import filekind


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix, what", [(".jpg", "a JPEG image"), (".png", "a PNG image"), (".gif", "a GIF image"),
                                          (".bmp", "a BMP image"), (".webp", "a WebP image"),
                                          (".tif", "a TIFF image")])
def test_images(tmp_path, suffix, what):
    path = tmp_path / f"photo{suffix}"
    _photo().save(path)
    assert filekind.sniff(path) == filekind.FileKind(filekind.IMAGE, what)


def _onnx_model(path: Path, with_metadata: bool) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    model = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])
    if with_metadata:
        helper.set_model_props(model, {"panseg": json.dumps({"num_classes": 5})})
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.mark.parametrize("with_metadata", [False, True])
def test_onnx_model(tmp_path, with_metadata):
    path = tmp_path / "model.onnx"
    _onnx_model(path, with_metadata)
    assert filekind.sniff(path).kind == filekind.ONNX
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:-5])  # the graph's length now runs past the end
    assert filekind.sniff(truncated).kind == filekind.UNKNOWN


def test_text_json_and_empty(tmp_path):
    cases = {
        "notes.txt": (b"# training notes\nepoch 3: loss 1.2 \xe2\x80\x94 fine\n", filekind.TEXT),
        "config.json": (b'\n  {"model": {"w": [1, 2]}}\n', filekind.JSON),
        "list.json": (b"[1, 2, 3]", filekind.JSON),
        "bmw.txt": (b"BMW parts list\n" * 3, filekind.TEXT),  # starts like a BMP, is not one
        "empty.pth": (b"", filekind.EMPTY),
    }
    for name, (content, kind) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert filekind.sniff(path).kind == kind, name


def test_zip_archives(tmp_path):
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.zeros(3))
    assert filekind.sniff(npz) == filekind.FileKind(filekind.ZIP, "a NumPy .npz archive")
    other = tmp_path / "bundle.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("outer/inner/data.pkl", b"\x80\x02N.")  # too deep for torch
    assert filekind.sniff(other).kind == filekind.ZIP
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(other.read_bytes()[:40])
    assert filekind.sniff(damaged) == filekind.FileKind(filekind.ZIP, "a damaged zip archive")


def test_signatures_of_plans_and_unknown_binary(tmp_path):
    # No TensorRT here to build a plan: its fixed 4-byte tag is what the sniffer reads, followed by arbitrary bytes.
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"ftrt" + bytes(range(256)) * 4)
    assert filekind.sniff(plan).kind == filekind.TENSORRT_PLAN
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x01" + np.random.default_rng(1).bytes(10_000))
    found = filekind.sniff(noise)
    assert found.kind == filekind.UNKNOWN and not found.may_be_checkpoint


def test_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        filekind.sniff(tmp_path / "nope.pth")
