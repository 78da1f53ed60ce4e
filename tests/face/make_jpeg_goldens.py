#!/usr/bin/env python3
"""Writes the JPEG parity fixtures of test_jpeg (tests/data/face/jpeg/): small JPEG files of every
kind decode_image meets (baseline 4:2:0 / 4:2:2 / 4:4:4, odd sizes, progressive, restart markers,
grayscale, CMYK, YCCK (written by make_ycck_jpeg.c), EXIF orientation) and, for each, the pixels PIL hands ComfyUI — Image.open,
ImageOps.exif_transpose, convert("RGB") — as a PNG golden, plus jpeg_goldens.json.

Run with a Pillow venv outside the repository (CI never runs Python):
  python3 -m venv /work/venv-jpeg && /work/venv-jpeg/bin/pip install pillow numpy
  /work/venv-jpeg/bin/python tests/face/make_jpeg_goldens.py
"""
import io
import json
import os

import numpy as np
from PIL import Image, ImageOps, features
import PIL

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "face", "jpeg")


def picture(w, h, seed):
    """Smooth colour ramps, hard edges and noise: chroma detail that upsampling must reproduce."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    img = np.stack([r, g, b], axis=-1)
    img[(x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 4) ** 2] = [230, 40, 60]  # red disc
    img[h // 5 : h // 5 + 3, :] = [20, 200, 20]  # green bar
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def save(name, im, **kwargs):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    data = buf.getvalue()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    return data


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = Image.fromarray(picture(64, 48, 1), "RGB")
    odd = Image.fromarray(picture(61, 45, 2), "RGB")
    cases = [
        ("baseline_420.jpg", rgb, dict(quality=90, subsampling=2)),
        ("baseline_422.jpg", rgb, dict(quality=90, subsampling=1)),
        ("baseline_444.jpg", rgb, dict(quality=95, subsampling=0)),
        ("odd_61x45_420.jpg", odd, dict(quality=85, subsampling=2)),
        ("progressive_420.jpg", rgb, dict(quality=90, subsampling=2, progressive=True)),
        ("progressive_444.jpg", odd, dict(quality=90, subsampling=0, progressive=True)),
        ("restart_420.jpg", rgb, dict(quality=90, subsampling=2, restart_marker_blocks=3)),
        ("grayscale.jpg", rgb.convert("L"), dict(quality=90)),
        ("cmyk.jpg", rgb.convert("CMYK"), dict(quality=90)),
    ]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    cases.append(("exif6_420.jpg", odd, dict(quality=90, subsampling=2, exif=exif.tobytes())))
    exif = Image.Exif()
    exif[0x0112] = 5
    cases.append(("exif5_progressive.jpg", rgb, dict(quality=90, progressive=True,
                                                     exif=exif.tobytes())))

    files = []
    written = {}
    for name, im, kwargs in cases:
        written[name] = save(name, im, **kwargs)
    # Damaged files PIL still decodes (libjpeg warns, fills grey, PIL ignores the warnings):
    # decode_image must give the same pixels. Bytes flipped inside the entropy-coded data (never
    # making or breaking a 0xFF marker prefix), and entropy data cut in half then closed by EOI.
    base = written["baseline_420.jpg"]
    sos = base.find(b"\xff\xda")
    start = sos + 2 + (base[sos + 2] << 8) + base[sos + 3]
    end = base.rfind(b"\xff\xd9")
    flipped = bytearray(base)
    for off in (start + 300, start + 301, start + 700, start + 1200):
        if flipped[off - 1] == 0xFF or flipped[off] == 0xFF:
            continue
        v = flipped[off] ^ 0x5A
        flipped[off] = v if v != 0xFF else 0x12
    cut = base[: start + (end - start) // 2].rstrip(b"\xff") + b"\xff\xd9"
    for name, data in (("corrupt_entropy.jpg", bytes(flipped)), ("short_scan.jpg", cut)):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        written[name] = data
        cases.append((name, None, None))

    # Written by libjpeg, not Pillow (which cannot write YCCK): tests/face/make_ycck_jpeg.c.
    with open(os.path.join(OUT, "ycck.jpg"), "rb") as f:
        written["ycck.jpg"] = f.read()
    cases.append(("ycck.jpg", None, None))

    for name, _, _ in cases:
        data = written[name]
        decoded = Image.open(io.BytesIO(data))
        mode = decoded.mode
        shown = ImageOps.exif_transpose(decoded).convert("RGB")
        golden = name.rsplit(".", 1)[0] + ".pil.png"
        shown.save(os.path.join(OUT, golden), "PNG")
        files.append({"file": name, "golden": golden, "mode": mode,
                      "progressive": bool(decoded.info.get("progressive", 0)),
                      "w": shown.width, "h": shown.height, "bytes": len(data)})
    # fuzz_image's stb_image crash input (not a fixture here: it is replayed from the fuzz
    # regressions); PIL decodes it, with corrupt-data warnings, and so must we.
    crash = os.path.join(OUT, "..", "..", "..", "fuzz", "regressions", "image",
                         "stb_jpeg_decode_block_oob")
    with open(crash, "rb") as f:
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(f.read()))).convert("RGB")
    shown.save(os.path.join(OUT, "stb_jpeg_decode_block_oob.pil.png"), "PNG")

    meta = {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
            "decode": "Image.open, ImageOps.exif_transpose, convert('RGB')", "files": files}
    with open(os.path.join(OUT, "jpeg_goldens.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
