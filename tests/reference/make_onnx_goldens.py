#!/usr/bin/env python3
"""onnxruntime (CPU) goldens for the real face models in ../shared/models.

Run with a venv that has onnxruntime + numpy + pillow (outside the repo):
    python3 -m venv /work/venv-onnx && /work/venv-onnx/bin/pip install onnxruntime numpy pillow
    /work/venv-onnx/bin/python tests/reference/make_onnx_goldens.py

Input: ../shared/faces/astronaut.png (512x512 RGB) resampled to HxW by integer nearest
(src = dst * 512 // size, identical in the C++ test), blob = (p - 127.5) * scale as float32, NCHW,
RGB. Every output of the model is stored in full (safetensors, F32) as out0, out1, ... in graph
order; the C++ test (tests/onnx/test_onnx_models.cpp) rebuilds the same input and compares.
"""
import json
import os
import struct
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("INSTANTID_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
OUT = os.path.join(ROOT, "tests", "data", "onnx")

# (model, height, width, scale)
CASES = [
    ("scrfd_2.5g", 640, 640, 0.0078125),
    ("scrfd_2.5g", 256, 320, 0.0078125),
    ("scrfd_500m", 448, 448, 0.0078125),
    ("scrfd_500m", 256, 320, 0.0078125),
    ("mobilefacenet_128d", 112, 112, np.float32(1.0 / 127.5)),
]


def blob(height, width, scale):
    img = np.asarray(Image.open(os.path.join(SHARED, "faces", "astronaut.png")).convert("RGB"))
    h0, w0 = img.shape[:2]
    ys = (np.arange(height) * h0) // height
    xs = (np.arange(width) * w0) // width
    res = img[ys][:, xs].astype(np.float32)  # [H, W, 3] RGB
    x = (res - np.float32(127.5)) * np.float32(scale)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


def save_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    os.makedirs(OUT, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for model, h, w, scale in CASES:
        sess = ort.InferenceSession(os.path.join(SHARED, "models", model + ".onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        x = blob(h, w, scale)
        outs = sess.run(None, {sess.get_inputs()[0].name: x})
        tensors = {f"out{i}": o.astype(np.float32) for i, o in enumerate(outs)}
        name = f"{model}_{h}x{w}.safetensors"
        save_safetensors(os.path.join(OUT, name), tensors,
                         {"model": model, "height": str(h), "width": str(w), "scale": repr(float(scale)),
                          "onnxruntime": ort.__version__})
        print(name, [o.shape for o in outs], "max score", float(outs[0].max()))


if __name__ == "__main__":
    sys.exit(main())
