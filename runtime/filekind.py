"""What kind of file a path holds, from its first bytes: a wrong file is named at once, not after a failed load.

Handing a photo or an exported model to a loader that expects a PyTorch checkpoint used to end, seconds later, in
"truncated or corrupt". The signatures here are cheap (a few bytes, a zip directory, the top-level fields of an
ONNX protobuf) and need neither torch nor onnx, so any command can call :func:`sniff` before importing them.
"""

from __future__ import annotations

import codecs
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.errors import PansegError

_HEADER_BYTES = 4096
NOT_READABLE_CHECKPOINT = "not a readable PyTorch checkpoint (truncated or corrupt)"

# kinds that :func:`sniff` returns
CHECKPOINT = "checkpoint"  # a zip archive with a */data.pkl member, or a pickle: torch.load may read it
DAMAGED_CHECKPOINT = "damaged checkpoint"  # a checkpoint's signature, but its zip directory is unreadable
ONNX = "onnx"
ORT = "ort"
TENSORRT_PLAN = "tensorrt plan"
IMAGE = "image"
JSON = "json"
TEXT = "text"
EMPTY = "empty"
ZIP = "zip"
UNKNOWN = "unknown"

_IMAGE_SIGNATURES = (  # (offset, bytes, format)
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)
_BMP_INFO_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # "BM" alone is too common a start for text
_PICKLE_PROTOCOLS = range(2, 6)  # torch.save writes protocol 2 by default; PROTO opcode \x80 then the version
_LEGACY_TEXT_MAGIC = b"L119547037146038801333356L\n"  # torch's legacy magic number pickled with protocol 0 or 1
_TENSORRT_MAGIC = b"ftrt"  # a serialized TensorRT engine starts with this tag
_ORT_MAGIC = b"ORTM"  # ONNX Runtime's flatbuffer format, at offset 4

_CHECKPOINT_HINTS = {  # what to do instead, for files a user plausibly mistakes for a checkpoint
    ONNX: " (already exported: run it with panseg-rt)",
    ORT: " (already exported: run the .onnx it came from with panseg-rt)",
    TENSORRT_PLAN: " (already built: run it with panseg-rt on its GPU)",
    IMAGE: " (to segment images: panseg-rt infer MODEL.onnx IMAGE -o DIR)",
}

# ONNX ModelProto: field number -> protobuf wire type (0 varint, 2 length-delimited); 7 is the graph.
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_MAX_TOP_FIELDS = 100_000


@dataclass(frozen=True)
class FileKind:
    """One of the kinds above, and a phrase naming it for messages ("a JPEG image")."""

    kind: str
    what: str

    @property
    def may_be_checkpoint(self) -> bool:
        return self.kind == CHECKPOINT


def _read_varint(f: BinaryIO) -> int | None:
    value = 0
    for shift in range(0, 64, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _is_onnx_model(f: BinaryIO, size: int) -> bool:
    """Every top-level field is a ModelProto field of the right wire type, lengths fit the file, a graph is there.

    Only tags and lengths are read (the graph is skipped with a seek), so a model of any size takes microseconds.
    """
    f.seek(0)
    seen = set()
    for _ in range(_ONNX_MAX_TOP_FIELDS):
        if f.tell() == size:
            return 7 in seen
        tag = _read_varint(f)
        if tag is None or _ONNX_MODEL_FIELDS.get(tag >> 3) != tag & 7:
            return False
        value = _read_varint(f)
        if value is None:
            return False
        if tag & 7 == 2:
            if f.tell() + value > size:
                return False
            f.seek(value, os.SEEK_CUR)
        seen.add(tag >> 3)
    return False


def _zip_kind(path: str | os.PathLike, first_name: bytes) -> FileKind:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        # No readable directory: a checkpoint cut short if its first member is the pickle torch writes first.
        if first_name.endswith(b"/data.pkl"):
            return FileKind(DAMAGED_CHECKPOINT, "a PyTorch checkpoint that is truncated or corrupt")
        return FileKind(ZIP, "a damaged zip archive")
    if any(name.endswith("/data.pkl") and name.count("/") == 1 for name in names):
        return FileKind(CHECKPOINT, "a PyTorch checkpoint (zip)")
    if names and all(name.endswith(".npy") for name in names):
        return FileKind(ZIP, "a NumPy .npz archive")
    return FileKind(ZIP, "a zip archive without a */data.pkl member")


def _text_kind(header: bytes) -> FileKind | None:
    if b"\x00" in header:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(header, final=False)  # may end mid-character
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    if text.lstrip("\ufeff \t\r\n").startswith(("{", "[")):
        return FileKind(JSON, "a JSON file")
    return FileKind(TEXT, "a text file")


def sniff(path: str | os.PathLike) -> FileKind:
    """Name what ``path`` holds from its signature; OSError if it cannot be opened."""
    with open(path, "rb") as f:
        header = f.read(_HEADER_BYTES)
        if not header:
            return FileKind(EMPTY, "an empty file")
        if header.startswith(b"PK\x03\x04"):
            name_length = int.from_bytes(header[26:28], "little")
            return _zip_kind(path, header[30:30 + name_length])
        if header.startswith(b"PK"):
            return FileKind(ZIP, "an empty or split zip archive")
        if (header[0] == 0x80 and len(header) > 1 and header[1] in _PICKLE_PROTOCOLS) or \
                header.startswith(_LEGACY_TEXT_MAGIC):
            return FileKind(CHECKPOINT, "a PyTorch checkpoint (legacy pickle)")
        if header.startswith(_TENSORRT_MAGIC):
            return FileKind(TENSORRT_PLAN, "a TensorRT plan")
        if header[4:8] == _ORT_MAGIC:
            return FileKind(ORT, "an ONNX Runtime model (.ort)")
        for offset, signature, image_format in _IMAGE_SIGNATURES:
            if header[offset:offset + len(signature)] == signature:
                return FileKind(IMAGE, f"a {image_format} image")
        if header.startswith(b"BM") and int.from_bytes(header[14:18], "little") in _BMP_INFO_HEADER_SIZES:
            return FileKind(IMAGE, "a BMP image")
        if header.startswith(b"RIFF") and header[8:12] == b"WEBP":
            return FileKind(IMAGE, "a WebP image")
        if _is_onnx_model(f, os.fstat(f.fileno()).st_size):
            return FileKind(ONNX, "an ONNX model")
    return _text_kind(header) or FileKind(UNKNOWN, "unrecognised binary data (neither a zip archive nor a pickle)")


def refuse_non_checkpoint(path: str | os.PathLike) -> None:
    """PansegError naming ``path`` unless it may be a PyTorch checkpoint: missing, not a file, or another kind of
    file by its first bytes. Here, not in train/checkpoint.py, so a command can refuse before importing torch."""
    path = Path(path)
    if not path.is_file():
        raise PansegError(f"{path}: no such checkpoint file" if not path.exists() else f"{path}: not a file")
    try:
        found = sniff(path)
    except OSError as exc:
        raise PansegError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if found.kind == DAMAGED_CHECKPOINT:
        raise PansegError(f"{path}: {NOT_READABLE_CHECKPOINT}")
    if not found.may_be_checkpoint:
        raise PansegError(f"{path}: {found.what}, not a PyTorch checkpoint{_CHECKPOINT_HINTS.get(found.kind, '')}")
