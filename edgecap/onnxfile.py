"""What an ONNX file would make ONNX Runtime read besides itself: its external-data locations.

A bundle is a closed world (DESIGN.md §9): every file a graph pulls in must lie inside the bundle
and carry a checksum. ONNX Runtime 1.32 refuses a `location` that climbs out of the model's folder,
but 1.18 (which `onnxruntime>=1.18` admits) reads `../../etc/passwd` as weights, so edgecap checks
this itself, whatever the ONNX Runtime version. The runtime has no `onnx` dependency, so this reads
the protobuf wire format directly: only the few messages that can hold a tensor are walked, and
tensor payloads (`raw_data`) are skipped by their length, never copied.

Field numbers are those of onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto).
"""

from __future__ import annotations

import mmap
import os
from typing import Iterator

MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies) deeper than this are not a model we wrote


class OnnxFormatError(ValueError):
    """The file is not well-formed protobuf where a tensor could be."""


# message -> {field number: message type of that (length-delimited) field}; other fields are skipped
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxFormatError("a field runs past the end of its message")
            yield number, pos, pos + length
            pos += length
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise OnnxFormatError("a field runs past the end of its message")


def _locations(buf: memoryview, kind: str, start: int, end: int, depth: int, out: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise OnnxFormatError(f"subgraphs nested more than {MAX_DEPTH} deep")
    if kind == "entry":  # StringStringEntryProto: key = 1, value = 2
        entry = {number: bytes(buf[a:b]) for number, a, b in _fields(buf, start, end)}
        if entry.get(1) == b"location":
            try:
                out.append(entry.get(2, b"").decode("utf-8"))
            except UnicodeDecodeError:
                raise OnnxFormatError("an external-data location is not UTF-8") from None
        return
    children = _MESSAGES[kind]
    for number, a, b in _fields(buf, start, end):
        child = children.get(number)
        if child is not None:
            _locations(buf, child, a, b, depth + 1, out)


def external_data_locations(path: str | os.PathLike) -> list[str]:
    """Every external-data `location` in the ONNX file at `path`, in file order (duplicates kept).

    Raises OSError if the file cannot be read and OnnxFormatError if it is not well-formed.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise OnnxFormatError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                out: list[str] = []
                _locations(buf, "model", 0, size, 0, out)
                return out
            finally:
                buf.release()
