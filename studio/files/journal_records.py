"""The recovery journal's records: framing on disk, one record per finished operation, and replay.

A record on disk is a fixed header (magic, JSON length, payload length, CRC-32 of both), a JSON object
saying what changed, and the raw bytes of the arrays it carries (stroke rectangles, new layers, result
images). A record whose bytes are incomplete or whose CRC does not match is the one being written when
the process died: reading stops there, which loses at most that one operation.

Records describe the *effect* of an operation on the document (undo of "add layer" is recorded as
"remove layer"), so replay never needs the undo stack that existed before the last snapshot.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from backend import strict_json
from studio.commands import (
    AddLayer,
    Command,
    MergeDown,
    MoveLayer,
    Paint,
    PaintMask,
    RemoveLayer,
    SetLayerProps,
)
from studio.document import Document
from studio.files.archive import ProjectError
from studio.layers import Layer

MAGIC = b"SJR1"
_FRAME = struct.Struct("<4sIQI")  # magic, JSON length, payload length, CRC-32 of JSON + payload
MAX_JSON = 512 * 1024 * 1024
MAX_PAYLOAD = 8 * 1024 * 1024 * 1024
_DTYPES = {"uint8", "int16", "int32", "int64", "uint16", "float32", "float64"}

Record = tuple[dict[str, Any], list[np.ndarray]]


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    """One framed record: the JSON header (with array shapes added) and the arrays' raw bytes."""
    return b"".join(encode_parts(header, arrays))


def encode_parts(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """The pieces of one framed record, in order, the arrays' bytes not copied (a whole-layer fill is
    16 MB at 2048²: the journal writes it straight from the array)."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [{"dtype": str(a.dtype), "shape": list(a.shape)} for a in arrays]}
    text = strict_json.dumps(header, separators=(",", ":")).encode("utf-8")
    payload = [a.reshape(-1).view(np.uint8).data for a in arrays]
    crc = zlib.crc32(text)
    for part in payload:
        crc = zlib.crc32(part, crc)
    frame = _FRAME.pack(MAGIC, len(text), sum(len(p) for p in payload), crc)
    return [frame + text, *payload]


def decode_all(data: bytes) -> tuple[list[Record], int]:
    """Every complete record in a journal's bytes, and how many bytes at the end were torn off."""
    records: list[Record] = []
    pos = 0
    for record, end in _frames(data):
        records.append(record)
        pos = end
    return records, len(data) - pos


def _frames(data: bytes) -> Iterator[tuple[Record, int]]:
    pos = 0
    view = memoryview(data)
    while pos + _FRAME.size <= len(data):
        magic, json_len, payload_len, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        end = start + json_len + payload_len
        if magic != MAGIC or json_len > MAX_JSON or payload_len > MAX_PAYLOAD or end > len(data):
            return  # torn or foreign bytes: the operation in progress when the process died
        text, payload = view[start : start + json_len], view[start + json_len : end]
        if zlib.crc32(payload, zlib.crc32(text)) != crc:
            return
        try:
            header = strict_json.loads(bytes(text).decode("utf-8"))
            arrays = _arrays(header, payload)
        except (ValueError, TypeError, KeyError):
            return
        yield (header, arrays), end
        pos = end


def _arrays(header: dict[str, Any], payload: memoryview) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    offset = 0
    for spec in header["arrays"]:
        if spec["dtype"] not in _DTYPES:
            raise ValueError(f"unexpected dtype {spec['dtype']}")
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(payload):
            raise ValueError("array runs past its record")
        out.append(np.frombuffer(payload[offset : offset + size], dtype=dtype).reshape(shape).copy())
        offset += size
    return out


# ---------------------------------------------------------------------------------- operations → records


def operation_record(what: str, command: Command, doc: Document) -> Record | None:
    """The record for a finished do/undo/redo, read after it was applied; None for an unknown command."""
    forward = what != "undo"
    active = doc.active_id
    if isinstance(command, AddLayer | RemoveLayer):
        adds = isinstance(command, AddLayer) == forward
        if adds:
            header = {"op": "add_layer", "index": command.index, "layer": command.layer.properties()}
            return {**header, "active": active}, [command.layer.pixels]
        return {"op": "remove_layer", "index": command.index, "id": command.layer.id, "active": active}, []
    if isinstance(command, MoveLayer):
        old, new = (
            (command.old_index, command.new_index) if forward else (command.new_index, command.old_index)
        )
        return {"op": "move_layer", "old": old, "new": new, "active": active}, []
    if isinstance(command, SetLayerProps):
        props = command.new if forward else command.old
        return {"op": "layer_props", "id": command.layer_id, "props": dict(props), "active": active}, []
    if isinstance(command, Paint):
        pixels = command.after if forward else command.before
        painted = doc.layer(command.layer_id).painted
        header = {"op": "pixels", "id": command.layer_id, "x": command.x, "y": command.y, "painted": painted}
        return {**header, "active": active}, [pixels]
    if isinstance(command, PaintMask):
        pixels = command.after if forward else command.before
        return {"op": "mask", "x": command.x, "y": command.y, "active": active}, [pixels]
    if isinstance(command, MergeDown):
        lower = command.after if forward else command.before
        state = {key: value for key, value in lower.items() if key != "pixels"}
        header = {"op": "merge_down" if forward else "unmerge", "index": command.index, "lower": state}
        if forward:
            return {**header, "active": active}, [lower["pixels"]]
        upper = command.upper.properties()
        return {**header, "upper": upper, "active": active}, [lower["pixels"], command.upper.pixels]
    return None


# ------------------------------------------------------------------------------------------------ replay


def apply_record(doc: Document, results: dict[str, Any], history: list[str], record: Record) -> None:
    """Re-apply one operation record to a document being rebuilt (no undo entries, no signals).

    `results` maps result ids to (manifest entry, arrays) for gallery records; `history` is the prompt
    history, replaced in place. Raises ProjectError when a record does not fit the document.
    """
    header, arrays = record
    op = header.get("op")
    try:
        if op == "add_layer":
            meta = header["layer"]
            x, y = int(meta.get("x", 0)), int(meta.get("y", 0))
            _check_rect(arrays[0], x, y, (doc.height, doc.width, 4))
            layer = Layer.from_properties(meta, arrays[0])
            AddLayer(layer, int(header["index"])).apply(doc)
        elif op == "remove_layer":
            if doc.layers[int(header["index"])].id != header["id"]:
                raise ProjectError("the journal removes a layer that is not where it expects")
            RemoveLayer(doc.layers[int(header["index"])], int(header["index"])).apply(doc)
        elif op == "move_layer":
            MoveLayer(int(header["old"]), int(header["new"])).apply(doc)
        elif op == "layer_props":
            props = {k: v for k, v in dict(header["props"]).items() if k in ("name", "opacity", "visible")}
            layer = doc.layer(str(header["id"]))
            for key, value in props.items():
                setattr(layer, key, value)
        elif op == "pixels":
            layer = doc.layer(str(header["id"]))
            patch = arrays[0]
            _check_rect(patch, int(header["x"]), int(header["y"]), (doc.height, doc.width, 4))
            Paint(layer.id, int(header["x"]), int(header["y"]), patch, patch, mark_painted=False).apply(doc)
            layer.painted = bool(header["painted"])
        elif op == "mask":
            patch = arrays[0]
            _check_rect(patch, int(header["x"]), int(header["y"]), doc.mask.shape)
            PaintMask(int(header["x"]), int(header["y"]), patch, patch).apply(doc)
        elif op in ("merge_down", "unmerge"):
            _merge_record(doc, header, arrays)
        elif op == "add_result":
            results[str(header["result"]["id"])] = (header["result"], arrays)
        elif op == "remove_result":
            results.pop(str(header["id"]), None)
        elif op == "history":
            history[:] = [str(p) for p in header["items"]]
        elif op == "active":
            pass  # the layer the person chose: set below, like every record's "active"
        elif op == "saving":
            pass  # a save began here (see `studio.files.journal.recover`); it changes nothing by itself
        else:
            raise ProjectError(f"the recovery journal holds an unknown operation {op!r}")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProjectError(f"the recovery journal does not fit its document ({op}: {exc})") from None
    if "active" in header and any(layer.id == header["active"] for layer in doc.layers):
        doc.active_id = header["active"]


def _merge_record(doc: Document, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """Replay a merge down (the lower layer's new state, the upper one gone) or its undo."""
    index = int(header["index"])
    meta = header["lower"]
    state = {
        "pixels": arrays[0],
        "x": int(meta["x"]),
        "y": int(meta["y"]),
        "opacity": float(meta["opacity"]),
        "painted": bool(meta["painted"]),
    }
    if (
        arrays[0].dtype != np.uint8
        or arrays[0].ndim != 3
        or arrays[0].shape[2] != 4
        or not 0 < index <= len(doc.layers)
    ):
        raise ValueError("a merge that does not fit the layers")
    if header["op"] == "merge_down":
        if index >= len(doc.layers):
            raise ValueError("no layer to merge down")
        MergeDown(doc.layers[index], index, state, state).apply(doc)
        return
    upper = Layer.from_properties(header["upper"], arrays[1])
    MergeDown(upper, index, state, state).revert(doc)


def _check_rect(patch: np.ndarray, x: int, y: int, shape: tuple[int, ...]) -> None:
    h, w = patch.shape[:2]
    if (
        patch.dtype != np.uint8
        or x < 0
        or y < 0
        or y + h > shape[0]
        or x + w > shape[1]
        or patch.shape[2:] != shape[2:]
    ):
        raise ValueError(f"a {w}×{h} patch at ({x}, {y}) does not fit")
