#!/usr/bin/python3
"""Writes the checkpoint reader fixtures in tests/data/checkpoint/.

Run with Debian's python3 (torch 1.13): /usr/bin/python3 tests/reference/make_checkpoint_fixtures.py

* reduced_f16.bin: torch.save of {"image_proj": OrderedDict, "ip_adapter": OrderedDict} for
  ModelLayout::reduced(10, 64, 64, 1) (70 layers of width 64/128, Resampler dim 64, 1 head,
  depth 4, 16 queries, ff_mult 4, embed 64) with D_out = 32, stored as fp16.
* mini_{f32,f16,bf16}.{bin,safetensors}: the same structure for a smaller layout (the reduced
  layout with depth 1 and only layers 0, 1, 4 and 69, i.e. keys 1, 3, 9, 139), in each dtype and
  both formats, with the same values. In the .bin files ip_adapter.3.to_k_ip / to_v_ip share one
  storage (the second at a storage offset) and ip_adapter.9.to_k_ip is a transposed
  (non-contiguous) view; image_proj.proj_in.bias holds special values (subnormals, -0, extremes).
* state_dicts.bin: torch.save of real nn.Module state_dict()s (OrderedDicts carrying
  `_metadata`, pickled with BUILD), an nn.Parameter (_rebuild_parameter), a 0-d tensor and an
  empty tensor, nested two levels; for the reader only (not an InstantID layout).
* checksums.json: for every tensor of every fixture, its shape and a checksum of the float32
  values torch gives (tensor.float()): sum_i bits(x_i) * (2 i + 1) mod 2^64 over the row-major
  elements, so the C++ test proves bit-exact fp16/bf16 conversion without storing float copies.
"""
import collections
import json
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "checkpoint")

SDXL_WIDTHS = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10  # keys 1..139
D_OUT = 32


def resampler(gen, dim=64, embed=64, depth=4, heads=1, dim_head=64, queries=16, ff_mult=4):
    inner = heads * dim_head
    r = lambda *s: torch.randn(*s, generator=gen) * 0.05
    d = collections.OrderedDict()
    d["latents"] = torch.randn(1, queries, dim, generator=gen) / dim ** 0.5
    d["proj_in.weight"] = r(dim, embed)
    d["proj_in.bias"] = r(dim)
    d["proj_out.weight"] = r(D_OUT, dim)
    d["proj_out.bias"] = r(D_OUT)
    d["norm_out.weight"] = 1 + r(D_OUT)
    d["norm_out.bias"] = r(D_OUT)
    for i in range(depth):
        p = f"layers.{i}."
        for n in ("0.norm1.", "0.norm2."):
            d[p + n + "weight"] = 1 + r(dim)
            d[p + n + "bias"] = r(dim)
        d[p + "0.to_q.weight"] = r(inner, dim)
        d[p + "0.to_kv.weight"] = r(2 * inner, dim)
        d[p + "0.to_out.weight"] = r(dim, inner)
        d[p + "1.0.weight"] = 1 + r(dim)
        d[p + "1.0.bias"] = r(dim)
        d[p + "1.1.weight"] = r(dim * ff_mult, dim)
        d[p + "1.3.weight"] = r(dim, dim * ff_mult)
    return d


def ip_adapter(gen, layer_indices):
    d = collections.OrderedDict()
    for n in layer_indices:
        c = SDXL_WIDTHS[n] // 10
        d[f"{2 * n + 1}.to_k_ip.weight"] = torch.randn(c, D_OUT, generator=gen) * 0.05
        d[f"{2 * n + 1}.to_v_ip.weight"] = torch.randn(c, D_OUT, generator=gen) * 0.05
    return d


def checksum(t):
    bits = t.float().contiguous().numpy().reshape(-1).view(np.uint32).astype(np.uint64)
    weights = np.arange(bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return int(np.sum(bits * weights, dtype=np.uint64))


def flat(ckpt):
    return collections.OrderedDict(
        (f"{top}.{name}", t) for top, inner in ckpt.items() for name, t in inner.items())


ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 \
            else t.numpy().tobytes()
        header[name] = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    os.makedirs(OUT, exist_ok=True)
    sums = {}
    gen = torch.Generator().manual_seed(20240917)

    # Full reduced layout, fp16.
    full = {"image_proj": resampler(gen), "ip_adapter": ip_adapter(gen, range(70))}
    full = {k: collections.OrderedDict((n, t.half()) for n, t in v.items()) for k, v in full.items()}
    torch.save(full, os.path.join(OUT, "reduced_f16.bin"))
    sums["reduced_f16.bin"] = {n: {"shape": list(t.shape), "checksum": str(checksum(t))}
                               for n, t in flat(full).items()}

    # Mini layout in three dtypes, both formats, same values.
    base = {"image_proj": resampler(gen, depth=1), "ip_adapter": ip_adapter(gen, [0, 1, 4, 69])}
    specials = torch.tensor([0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14 * 0.75, 65504.0,
                             -65504.0, 1e-3, 3.140625, -2.5, 2.0 ** -133, 3.0e38, 1.0 / 3.0])
    bias = base["image_proj"]["proj_in.bias"]
    bias[: specials.numel()] = specials
    for dtype, tag in ((torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")):
        ck = {k: collections.OrderedDict((n, t.to(dtype)) for n, t in v.items())
              for k, v in base.items()}
        if dtype == torch.float16:  # 3e38 overflows fp16: keep the tensor finite
            ck["image_proj"]["proj_in.bias"][11] = 1024.0
        write_safetensors(os.path.join(OUT, f"mini_{tag}.safetensors"), flat(ck))
        sums[f"mini_{tag}.safetensors"] = {n: {"shape": list(t.shape), "checksum": str(checksum(t))}
                                           for n, t in flat(ck).items()}
        # The .bin shares one storage between key 3's k and v, and stores key 9's k transposed.
        ipa = ck["ip_adapter"]
        kv = torch.stack([ipa["3.to_k_ip.weight"], ipa["3.to_v_ip.weight"]])
        ipa["3.to_k_ip.weight"], ipa["3.to_v_ip.weight"] = kv[0], kv[1]
        ipa["9.to_k_ip.weight"] = ipa["9.to_k_ip.weight"].t().contiguous().t()
        assert not ipa["9.to_k_ip.weight"].is_contiguous()
        assert ipa["3.to_v_ip.weight"].storage_offset() > 0
        torch.save(ck, os.path.join(OUT, f"mini_{tag}.bin"))
        sums[f"mini_{tag}.bin"] = {n: {"shape": list(t.shape), "checksum": str(checksum(t))}
                                   for n, t in flat(ck).items()}

    # Real state dicts: _metadata (BUILD), Parameter, 0-d and empty tensors, two nesting levels.
    torch.manual_seed(7)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    sd = {"image_proj": module.state_dict(),
          "extra": {"param": torch.nn.Parameter(torch.arange(4.0)),
                    "inner": collections.OrderedDict(scalar=torch.tensor(2.5),
                                                     empty=torch.zeros(0, 3))}}
    torch.save(sd, os.path.join(OUT, "state_dicts.bin"))
    flat_sd = collections.OrderedDict()
    for top, inner in sd.items():
        for name, t in inner.items():
            if isinstance(t, dict):
                for n2, t2 in t.items():
                    flat_sd[f"{top}.{name}.{n2}"] = t2
            else:
                flat_sd[f"{top}.{name}"] = t
    sums["state_dicts.bin"] = {n: {"shape": list(t.shape), "checksum": str(checksum(t.detach()))}
                               for n, t in flat_sd.items()}

    with open(os.path.join(OUT, "checksums.json"), "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
