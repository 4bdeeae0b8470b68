"""The open inference protocol (KServe v2, spoken by Triton, KServe and Seldon), for the model we serve.

Requests are JSON, or JSON followed by raw tensor bytes (Triton's binary-data extension, what the
official tritonclient sends by default: the JSON's length in the Inference-Header-Content-Length
header, each binary input's size in its parameters.binary_data_size). The model takes one input:
- UINT8 or FP32 pixels (values 0..255, FP32 rounded to 8 bits as a decoded image would be), shaped
  [N, C, H, W] or [N, H, W, C] in the model's channels and size;
- or BYTES, shape [N]: encoded images (PNG, JPEG, ...), decoded and resized as uploads are; in JSON
  each element is the image's base64 text.
It answers "probabilities" (FP32 [N, K], in the order of /info's classes) and, when asked for,
"label" (BYTES [N]).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np

OUTPUTS = ("probabilities", "label")
HEADER = "Inference-Header-Content-Length"
_DTYPES = {"UINT8": np.uint8, "FP32": np.float32}
_SIZES = {"UINT8": 1, "FP32": 4}


class ProtocolError(Exception):
    """A request that breaks the protocol or does not fit the model: status and a message for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def metadata(model) -> dict:
    c, h, w = model.pre.shape
    return {
        "name": model.name,
        "versions": ["1"],
        "platform": "pytorch_imgclf",
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, c, h, w]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "classes": [str(k) for k in model.classes],
            "sha256": model.sha256,
            "accepted_inputs": "UINT8 or FP32 [N,C,H,W] or [N,H,W,C] pixels 0..255; BYTES [N] encoded images",
        },
    }


def parse(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON and the binary bytes after it."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER} must be an integer, not {header_length[:40]!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER} {n} does not fit a body of {len(body)} bytes")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the request is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    return request, rest


def _shape(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError("'shape' must be a list of non-negative integers")
    return shape


def input_tensor(request: dict, binary: bytes, max_images: int, max_body: int):
    """The single input as ("pixels", uint8 array of the given layout) or ("bytes", [encoded images])."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError("'inputs' must hold exactly one tensor: the images")
    t = inputs[0]
    dtype, shape = t.get("datatype"), _shape(t)
    if dtype not in ("UINT8", "FP32", "BYTES"):
        raise ProtocolError(f"datatype {str(dtype)[:20]!r} is not accepted: send UINT8 or FP32 pixels, or BYTES encoded images")
    count = int(np.prod(shape, dtype=np.int64))
    if shape[0] > max_images:
        raise ProtocolError(f"{shape[0]} images in one request, more than the {max_images} allowed", 413)
    params: dict = t["parameters"] if isinstance(t.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size != len(binary):
            raise ProtocolError(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON")
        raw = binary
    elif "data" in t:
        raw = None
    else:
        raise ProtocolError("the input has neither 'data' nor parameters.binary_data_size")
    if dtype == "BYTES":
        return "bytes", _bytes_elements(raw, t.get("data"), count)
    if count * _SIZES[dtype] > max_body:
        raise ProtocolError(f"a tensor of {count:,} elements is larger than the upload limit", 413)
    if raw is not None:
        if len(raw) != count * _SIZES[dtype]:
            raise ProtocolError(f"{len(raw)} bytes of {dtype} data do not fill shape {shape}")
        array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
    else:
        try:
            array = np.asarray(t["data"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ProtocolError("'data' must be a list of numbers for UINT8 and FP32") from None
        if array.size != count:
            raise ProtocolError(f"'data' holds {array.size} values, shape {shape} needs {count}")
        array = array.reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError("FP32 pixels must be finite numbers (0..255)")
    if dtype == "UINT8" and array.dtype != np.uint8 and ((array < 0) | (array > 255) | (array != np.round(array))).any():
        raise ProtocolError("UINT8 data must be integers from 0 to 255")
    return "pixels", np.clip(np.rint(array), 0, 255).astype(np.uint8) if array.dtype != np.uint8 else array


def _bytes_elements(raw: bytes | None, data, count: int) -> list[bytes]:
    if raw is not None:  # 4-byte little-endian length before each element
        out, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise ProtocolError("BYTES data ends inside an element's length")
            (n,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + n > len(raw):
                raise ProtocolError("BYTES data ends inside an element")
            out.append(raw[at : at + n])
            at += n
    else:
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ProtocolError("BYTES 'data' must be a list of base64 strings, one encoded image each")
        try:
            out = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError):
            raise ProtocolError("BYTES 'data' must be base64 text (or send the images as binary data)") from None
    if len(out) != count:
        raise ProtocolError(f"{len(out)} BYTES elements, the shape says {count}")
    return out


def to_nchw(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """[N,C,H,W] or [N,H,W,C] pixels as the model's N x C x H x W, or why they do not fit."""
    c, h, w = shape
    if array.ndim == 4 and array.shape[1:] == (c, h, w):
        return array
    if array.ndim == 4 and array.shape[1:] == (h, w, c):
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    raise ProtocolError(
        f"input shape {list(array.shape)} does not fit the model: send [N, {c}, {h}, {w}] or [N, {h}, {w}, {c}] "
        "pixels, or BYTES encoded images of any size",
        400,
    )


def requested_outputs(request: dict) -> tuple[list[str], bool]:
    """Which outputs to send and whether in binary: Triton sends every output in binary when the request
    names none and sets parameters.binary_data_output, and each named output may ask for binary."""
    params: dict = request["parameters"] if isinstance(request.get("parameters"), dict) else {}
    default_binary = params.get("binary_data_output") is True
    wanted = request.get("outputs")
    if wanted is None:
        return ["probabilities"], default_binary
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in wanted]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ProtocolError(f"unknown output {unknown[0][:40]!r}; this model gives {', '.join(OUTPUTS)}")
    binary = any((o.get("parameters") or {}).get("binary_data") is True for o in wanted if isinstance(o.get("parameters"), dict))
    return names, binary or default_binary


def response(model, request: dict, probs: np.ndarray, names: list[str], binary: bool) -> tuple[bytes, dict]:
    """The body and extra headers of an infer answer."""
    tensors, blobs = [], []
    for name in names:
        if name == "probabilities":
            values = probs.astype("<f4")
            tensor: dict = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
            blob, data = values.tobytes(), values.ravel().tolist()
        else:
            labels = [str(model.classes[i]) for i in probs.argmax(1)]
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(labels)]}
            blob = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in labels)
            data = labels
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        tensors.append(tensor)
    answer = {"model_name": model.name, "model_version": "1", "outputs": tensors}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    head = json.dumps(answer).encode()
    if binary:
        return head + b"".join(blobs), {HEADER: str(len(head))}
    return head, {}
