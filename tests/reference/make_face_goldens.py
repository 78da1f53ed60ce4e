#!/usr/bin/env python3
"""Goldens for tests/face: insightface 0.7.3's pre/post-processing re-implemented from
spec/face_pipeline.md with OpenCV 4.x, scikit-image and onnxruntime (insightface itself is not
needed). Run with a venv outside the repo:

  python3 -m venv /work/venv-face
  /work/venv-face/bin/pip install 'opencv-python-headless<5' onnxruntime scikit-image numpy pillow
  /work/venv-face/bin/python tests/reference/make_face_goldens.py [SHARED_DIR]

Writes tests/data/face/. CI never runs this; the outputs are committed.
"""
import hashlib
import io
import json
import math
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image
from skimage import transform as sktrans

assert cv2.__version__.startswith("4."), "goldens need OpenCV 4.x (5.x changed warpAffine)"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "face")
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
FACES = ["astronaut.png", "kaifu_resize.png", "musk_resize.jpeg", "pose.jpg", "pose2.jpg",
         "yann-lecun_resize.jpg"]
NO_FACE = "no_face_coffee.png"
SIZES = [640, 576, 512, 448, 384, 320, 256, 192]


def lcg_bytes(seed, n):
    """Deterministic bytes shared with tests/face/face_test_util.hpp (64-bit LCG, top byte)."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    out = bytearray(n)
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out[i] = x >> 56
    return bytes(out)


def synthetic(seed, w, h):
    return np.frombuffer(lcg_bytes(seed, w * h * 3), np.uint8).reshape(h, w, 3).copy()


def fnv(arr):
    """Polynomial hash shared with tests/face: sum(b[i] * P^(i+1)) mod 2^64, P = 0x100000001B3.
    Any single-byte change alters it (P is odd)."""
    data = np.ascontiguousarray(arr).view(np.uint8).ravel().astype(np.uint64)
    with np.errstate(over="ignore"):
        pw = np.cumprod(np.full(data.size, 0x100000001B3, dtype=np.uint64), dtype=np.uint64)
        h = np.sum(data * pw, dtype=np.uint64)
    return "%016x" % int(h)


# ---- insightface pieces (spec §5-§7) -------------------------------------------------------
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def estimate_norm(lmk, image_size=112):
    ratio = float(image_size) / 112.0
    dst = ARCFACE_DST * ratio
    tform = sktrans.SimilarityTransform()
    tform.estimate(lmk, dst)
    return tform.params[0:2, :]


def norm_crop(img, kps, image_size=112):
    m = estimate_norm(kps, image_size)
    return cv2.warpAffine(img, m, (image_size, image_size), borderValue=0.0), m


def letterbox(img, size):
    im_ratio = float(img.shape[0]) / img.shape[1]
    model_ratio = 1.0
    if im_ratio > model_ratio:
        new_height = size
        new_width = int(new_height / im_ratio)
    else:
        new_width = size
        new_height = int(new_width * im_ratio)
    det_scale = float(new_height) / img.shape[0]
    resized = cv2.resize(img, (new_width, new_height))
    det_img = np.zeros((size, size, 3), dtype=np.uint8)
    det_img[:new_height, :new_width, :] = resized
    return det_img, det_scale


def nms(dets, thresh=0.4):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


def postprocess(net_outs, size, det_scale, thresh=0.5):
    scores_list, bboxes_list, kpss_list = [], [], []
    fmc = 3
    for idx, stride in enumerate([8, 16, 32]):
        scores = net_outs[idx]
        bbox_preds = net_outs[idx + fmc] * stride
        kps_preds = net_outs[idx + fmc * 2] * stride
        height, width = size // stride, size // stride
        ac = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
        ac = (ac * stride).reshape((-1, 2))
        ac = np.stack([ac] * 2, axis=1).reshape((-1, 2))
        pos = np.where(scores >= thresh)[0]
        x1 = ac[:, 0] - bbox_preds[:, 0]
        y1 = ac[:, 1] - bbox_preds[:, 1]
        x2 = ac[:, 0] + bbox_preds[:, 2]
        y2 = ac[:, 1] + bbox_preds[:, 3]
        bboxes = np.stack([x1, y1, x2, y2], axis=-1)
        preds = []
        for i in range(0, 10, 2):
            preds.append(ac[:, i % 2] + kps_preds[:, i])
            preds.append(ac[:, i % 2 + 1] + kps_preds[:, i + 1])
        kpss = np.stack(preds, axis=-1).reshape((-1, 5, 2))
        scores_list.append(scores[pos])
        bboxes_list.append(bboxes[pos])
        kpss_list.append(kpss[pos])
    scores = np.vstack(scores_list)
    order = np.argsort(scores.ravel(), kind="stable")[::-1]
    bboxes = np.vstack(bboxes_list) / det_scale
    kpss = np.vstack(kpss_list) / det_scale
    pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
    keep = nms(pre_det)
    return pre_det[keep, :], kpss[order, :, :][keep, :, :]


def run_detector(session, img, size):
    det_img, det_scale = letterbox(img, size)
    blob = cv2.dnn.blobFromImage(det_img, 1.0 / 128, (size, size), (127.5, 127.5, 127.5), swapRB=True)
    outs = session.run(None, {session.get_inputs()[0].name: blob})
    det, kps = postprocess(outs, size, det_scale)
    return det, kps, outs, det_img, det_scale, blob


def largest(det):
    best, best_i = None, None
    for i in range(det.shape[0]):
        area = (det[i, 2] - det[i, 0]) * (det[i, 3] - det[i, 1])
        if best is None or area >= best:
            best, best_i = area, i
    return best_i


# ---- cv2 drawing of ComfyUI_InstantID utils.draw_kps -----------------------------------------
def draw_kps(h, w, kps):
    color_list = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    stickwidth = 4
    limb_seq = np.array([[0, 2], [1, 2], [3, 2], [4, 2]])
    kps = np.array(kps)
    out_img = np.zeros([h, w, 3])
    for i in range(len(limb_seq)):
        index = limb_seq[i]
        color = color_list[index[0]]
        x = kps[index][:, 0]
        y = kps[index][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth),
                                   int(angle), 0, 360, 1)
        out_img = cv2.fillConvexPoly(out_img.copy(), polygon, color)
    out_img = (out_img * 0.6).astype(np.uint8)
    for idx_kp, kp in enumerate(kps):
        color = color_list[idx_kp]
        x, y = kp
        out_img = cv2.circle(out_img.copy(), (int(x), int(y)), 10, color, -1)
    return out_img  # RGB


def png_bytes_rgb(rgb):
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def write(path, data):
    with open(os.path.join(OUT, path), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    g = {"opencv": cv2.__version__, "numpy": np.__version__, "onnxruntime": ort.__version__}

    # Synthetic resize cases (seeded noise).
    resize_cases = [(1, 97, 83, 64, 55), (2, 83, 97, 160, 190), (3, 128, 96, 64, 48),
                    (4, 100, 100, 100, 100), (5, 1, 7, 5, 3), (6, 90, 60, 30, 20),
                    (7, 61, 47, 33, 200), (8, 640, 360, 320, 180), (9, 33, 35, 640, 577),
                    (10, 300, 200, 299, 201)]
    g["resize"] = []
    for seed, w, h, dw, dh in resize_cases:
        src = synthetic(seed, w, h)
        dst = cv2.resize(src, (dw, dh))
        g["resize"].append({"seed": seed, "w": w, "h": h, "dw": dw, "dh": dh,
                            "hash": fnv(dst)})

    # Synthetic warpAffine cases.
    src = synthetic(11, 97, 83)
    mats = [[1.0, 0.0, 3.0, 0.0, 1.0, -2.0],
            [0.9, -0.3, 10.5, 0.3, 0.9, 4.25],
            [1.7, 0.4, -60.0, -0.4, 1.7, -20.0],
            [0.45, 0.01, 40.0, -0.02, 0.47, 30.0],
            [-1.0, 0.0, 96.0, 0.0, 1.0, 0.0],
            [2.3, 1.1, -150.3, -1.1, 2.3, 12.7]]
    g["warp"] = []
    for i, m in enumerate(mats):
        size = (112, 112) if i != 3 else (50, 40)
        dst = cv2.warpAffine(src, np.array(m, dtype=np.float64).reshape(2, 3), size, borderValue=0.0)
        g["warp"].append({"m": m, "w": size[0], "h": size[1], "hash": fnv(dst)})

    # blobFromImage.
    src = synthetic(12, 37, 29)
    b1 = cv2.dnn.blobFromImage(src, 1.0 / 128, (37, 29), (127.5, 127.5, 127.5), swapRB=True)
    b2 = cv2.dnn.blobFromImages([src], 1.0 / 127.5, (37, 29), (127.5, 127.5, 127.5), swapRB=True)
    g["blob"] = {"seed": 12, "w": 37, "h": 29, "det_hash": fnv(b1.astype(np.float32)),
                 "rec_hash": fnv(b2.astype(np.float32))}

    # Umeyama vs skimage on seeded landmark sets.
    rng = np.random.default_rng(1234)
    g["umeyama"] = []
    for _ in range(20):
        base = ARCFACE_DST * rng.uniform(0.5, 6.0) + rng.uniform(-50, 400, size=2)
        theta = rng.uniform(-1.2, 1.2)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        src_pts = (base @ rot.T + rng.normal(0, 2.0, size=(5, 2))).astype(np.float32)
        m = estimate_norm(src_pts)
        g["umeyama"].append({"src": [float(v) for v in src_pts.ravel()],
                             "m": [float(v) for v in m.ravel()]})

    # draw_kps.
    g["draw_kps"] = []
    kps_sets = [(480, 640, [[250.3, 200.7], [390.2, 205.1], [320.9, 280.4], [265.5, 350.2], [375.8, 352.9]]),
                (300, 256, [[80.0, 90.0], [170.5, 95.5], [128.2, 150.9], [95.1, 210.3], [160.7, 205.2]]),
                (200, 220, [[5.5, 10.2], [60.3, 8.1], [30.2, 40.7], [-3.0, 70.9], [70.1, 190.0]]),
                (256, 256, [[100.0, 100.0], [100.0, 100.0], [100.0, 100.0], [120.0, 120.0], [90.0, 130.0]])]
    krng = np.random.default_rng(77)
    for _ in range(16):
        h, w = int(krng.integers(64, 400)), int(krng.integers(64, 400))
        centre = krng.uniform([-20, -20], [w + 20, h + 20])
        spread = krng.uniform(5, 120)
        kps_sets.append((h, w, (centre + krng.normal(0, spread, size=(5, 2))).tolist()))
    for i, (h, w, kps) in enumerate(kps_sets):
        kp = np.array(kps, dtype=np.float32)
        img = draw_kps(h, w, kp)
        name = "draw_kps_%d.png" % i
        write(name, png_bytes_rgb(img))
        g["draw_kps"].append({"w": w, "h": h, "kps": [float(v) for v in kp.ravel()], "png": name})

    # EXIF orientation fixtures: 48x32 JPEGs of four solid quadrants, tagged 1..8; expected
    # values from PIL's ImageOps.exif_transpose (what ComfyUI's loader applies).
    from PIL import ImageOps
    base = np.zeros((32, 48, 3), np.uint8)
    base[:16, :24] = (230, 20, 20)
    base[:16, 24:] = (20, 230, 20)
    base[16:, :24] = (20, 20, 230)
    base[16:, 24:] = (230, 230, 20)
    g["exif"] = []
    for orientation in range(1, 9):
        im = Image.fromarray(base)
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
        name = "exif_%d.jpg" % orientation
        write(name, buf.getvalue())
        t = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
        h, w = t.shape[:2]
        probes = [[int(x), int(y)] + [int(c) for c in t[y, x]] for (x, y) in
                  [(w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)]]
        g["exif"].append({"file": name, "orientation": orientation, "w": w, "h": h, "probes_rgb": probes})
    ok, buf = cv2.imencode(".png", base[..., ::-1])
    write("quadrants.png", buf.tobytes())

    # Real photographs: letterbox hashes, detections, crops, embeddings.
    models = os.path.join(SHARED, "models")
    faces_dir = os.path.join(SHARED, "faces")
    g["photos"] = {}
    if os.path.isdir(models) and os.path.isdir(faces_dir):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        dets = {name: ort.InferenceSession(os.path.join(models, name), so, providers=["CPUExecutionProvider"])
                for name in ["scrfd_2.5g.onnx", "scrfd_500m.onnx"]}
        rec = ort.InferenceSession(os.path.join(models, "mobilefacenet_128d.onnx"), so,
                                   providers=["CPUExecutionProvider"])
        for fname in FACES + [NO_FACE]:
            img = cv2.imread(os.path.join(faces_dir, fname))
            entry = {"w": img.shape[1], "h": img.shape[0],
                     "decoded_hash": fnv(img) if fname.endswith(".png") else None,
                     "letterbox_hash": {}, "detectors": {}}
            for s in SIZES:
                entry["letterbox_hash"][str(s)] = fnv(letterbox(img, s)[0])
            for dname, sess in dets.items():
                per = {"sizes": {}}
                for s in SIZES:
                    det, kps, outs, _, det_scale, _ = run_detector(sess, img, s)
                    per["sizes"][str(s)] = {"bbox": det[:, :4].tolist(), "score": det[:, 4].tolist(),
                                            "kps": kps.reshape(-1, 10).tolist()}
                    if fname == "astronaut.png" and dname == "scrfd_2.5g.onnx" and s == 192:
                        raw = b"".join(np.ascontiguousarray(o, dtype=np.float32).tobytes() for o in outs)
                        write("scrfd25g_astronaut_192_outputs.bin", raw)
                        per["raw_outputs"] = {"size": 192, "det_scale": det_scale,
                                              "shapes": [list(o.shape) for o in outs]}
                # ComfyUI loop: first size with a face, largest face, crop + embedding.
                for s in SIZES:
                    d = per["sizes"][str(s)]
                    if d["bbox"]:
                        arr = np.array([b + [sc] for b, sc in zip(d["bbox"], d["score"])], np.float32)
                        sel = largest(arr)
                        kp = np.array(d["kps"][sel], np.float32).reshape(5, 2)
                        crop, m = norm_crop(img, kp)
                        blob = cv2.dnn.blobFromImages([crop], 1.0 / 127.5, (112, 112),
                                                      (127.5, 127.5, 127.5), swapRB=True)
                        emb = rec.run(None, {rec.get_inputs()[0].name: blob})[0].ravel()
                        crop_name = "crop_%s_%s.png" % (os.path.splitext(fname)[0], dname.split(".onnx")[0].replace(".", ""))
                        ok, buf = cv2.imencode(".png", crop)
                        write(crop_name, buf.tobytes())
                        per["selected"] = {"det_size": s, "index": sel, "m": m.ravel().tolist(),
                                           "crop_png": crop_name, "embedding": emb.tolist()}
                        break
                entry["detectors"][dname] = per
            g["photos"][fname] = entry
    else:
        print("WARNING: shared models/faces not found; photo goldens skipped")

    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        json.dump(g, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
