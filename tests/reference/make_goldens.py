#!/usr/bin/python3
"""Generates tests/data/reference/: a small InstantID checkpoint of a REDUCED layout and the
expected outputs of the spec's math, computed directly in PyTorch (Debian's torch 1.13).

    /usr/bin/python3 tests/reference/make_goldens.py [out_dir]

The layout is ModelLayout::reduced(10, 64, 64, 1): the 70 SDXL layers with widths 64/128,
face embedding 64, Resampler dim 64 (1 head of 64), depth 4, 16 queries, ff_mult 4, D_out 32.

Written files:
  model.bin          torch.save({"image_proj": OrderedDict, "ip_adapter": OrderedDict}), fp16
  model.safetensors  the same tensors, flat names, fp16, written by hand
  goldens.safetensors  expected outputs (F32/F64/I64), see the cases below

Inputs that are not stored (q, k, v, face embeddings, masks) come from hash_values(), an integer
hash that C++ (tests/reference_math/golden.hpp) reproduces bit for bit.

The math follows the InstantID repository's resampler.py, ComfyUI_InstantID's
CrossAttentionPatch.py (patch formulas, embeds_scaling, mask resize/pad/crop), ComfyUI's
ModelSamplingDiscrete (sigma schedule) and InstantID.py (combine, noise seed). The Resampler and
attention goldens are computed in float64 from the float32 inputs, so they are the exact values the
float32 C++ reference approximates; the noise, masks and schedule are computed in float32 as torch
does, for bit-level comparisons.
"""

import collections
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ---- Layout --------------------------------------------------------------------------------------

EMBED, DIM, HEADS, DIM_HEAD, DEPTH, QUERIES, FF_MULT, D_OUT = 64, 64, 1, 64, 4, 16, 4, 32
WIDTH_DIVISOR = 10
# SDXL blocks in host call order (spec §5): (type, id, depth, width)
BLOCKS = [("input", 4, 2, 640), ("input", 5, 2, 640), ("input", 7, 10, 1280),
          ("input", 8, 10, 1280), ("output", 0, 10, 1280), ("output", 1, 10, 1280),
          ("output", 2, 10, 1280), ("output", 3, 2, 640), ("output", 4, 2, 640),
          ("output", 5, 2, 640), ("middle", 0, 10, 1280)]
LAYERS = []  # (type, id, transformer index, width); index n ↔ checkpoint key 2n+1
for kind, bid, depth, width in BLOCKS:
    for t in range(depth):
        LAYERS.append((kind, bid, t, width // WIDTH_DIVISOR))


def layer_index(kind, bid, t):
    return [(l[0], l[1], l[2]) for l in LAYERS].index((kind, bid, t))


# ---- Deterministic inputs shared with C++ --------------------------------------------------------

M32 = 0xFFFFFFFF


def hash_values(seed, shape, scale):
    """Values in [-scale, scale): exact in float32 when scale is a power of two."""
    n = int(np.prod(shape))
    h = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B1)
         + np.uint64((seed * 0x85EBCA77) & M32) + np.uint64(0x165667B1)) & np.uint64(M32)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(M32)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(M32)
    h ^= h >> np.uint64(15)
    unit = (h >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)  # [0, 1)
    values = (unit * np.float32(2.0) - np.float32(1.0)) * np.float32(scale)
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


# ---- The checkpoint ------------------------------------------------------------------------------

def make_checkpoint():
    g = torch.Generator().manual_seed(20240917)

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).half()

    def near_one(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g)).half()

    proj = collections.OrderedDict()
    proj["latents"] = randn(1, QUERIES, DIM, std=DIM ** -0.5)
    proj["proj_in.weight"] = randn(DIM, EMBED, std=EMBED ** -0.5)
    proj["proj_in.bias"] = randn(DIM, std=0.1)
    proj["proj_out.weight"] = randn(D_OUT, DIM, std=DIM ** -0.5)
    proj["proj_out.bias"] = randn(D_OUT, std=0.1)
    proj["norm_out.weight"] = near_one(D_OUT)
    proj["norm_out.bias"] = randn(D_OUT, std=0.1)
    inner = HEADS * DIM_HEAD
    for i in range(DEPTH):
        p = f"layers.{i}."
        proj[p + "0.norm1.weight"] = near_one(DIM)
        proj[p + "0.norm1.bias"] = randn(DIM, std=0.1)
        proj[p + "0.norm2.weight"] = near_one(DIM)
        proj[p + "0.norm2.bias"] = randn(DIM, std=0.1)
        proj[p + "0.to_q.weight"] = randn(inner, DIM, std=2.0 * DIM ** -0.5)
        proj[p + "0.to_kv.weight"] = randn(2 * inner, DIM, std=2.0 * DIM ** -0.5)
        proj[p + "0.to_out.weight"] = randn(DIM, inner, std=inner ** -0.5)
        proj[p + "1.0.weight"] = near_one(DIM)
        proj[p + "1.0.bias"] = randn(DIM, std=0.1)
        proj[p + "1.1.weight"] = randn(DIM * FF_MULT, DIM, std=DIM ** -0.5)
        proj[p + "1.3.weight"] = randn(DIM, DIM * FF_MULT, std=(DIM * FF_MULT) ** -0.5)
    ip = collections.OrderedDict()
    for n, (_, _, _, width) in enumerate(LAYERS):
        ip[f"{2 * n + 1}.to_k_ip.weight"] = randn(width, D_OUT, std=D_OUT ** -0.5)
        ip[f"{2 * n + 1}.to_v_ip.weight"] = randn(width, D_OUT, std=D_OUT ** -0.5)
    return proj, ip


SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
                      torch.int64: "I64", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors, metadata=None):
    """The format by hand: 8-byte LE header length, JSON header, raw little-endian bytes."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.contiguous()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


# ---- Spec §2: combine and noise (float32, as ComfyUI_InstantID's InstantID.py) ------------------

def combine(face_embed, mode):
    clip_embed = face_embed.reshape(face_embed.shape[0], 1, -1)  # [N, 1, E] float32
    if clip_embed.shape[0] > 1:
        if mode == "average":
            clip_embed = torch.mean(clip_embed, dim=0).unsqueeze(0)
        elif mode == "norm average":
            clip_embed = torch.mean(clip_embed / torch.norm(clip_embed, dim=0, keepdim=True),
                                    dim=0).unsqueeze(0)
    return clip_embed


def uncond_of(clip_embed, noise):
    if noise > 0:
        seed = int(torch.sum(clip_embed).item()) % 1000000007
        torch.manual_seed(seed)
        return noise * torch.rand_like(clip_embed), seed
    return torch.zeros_like(clip_embed), -1


# ---- Spec §3: the Resampler, the module of InstantID's resampler.py (evaluated in float64) -----

def FeedForward(dim, mult=4):
    inner_dim = int(dim * mult)
    return torch.nn.Sequential(
        torch.nn.LayerNorm(dim),
        torch.nn.Linear(dim, inner_dim, bias=False),
        torch.nn.GELU(),
        torch.nn.Linear(inner_dim, dim, bias=False),
    )


def reshape_tensor(x, heads):
    bs, length, width = x.shape
    x = x.view(bs, length, heads, -1)
    x = x.transpose(1, 2)
    x = x.reshape(bs, heads, length, -1)
    return x


class PerceiverAttention(torch.nn.Module):
    def __init__(self, *, dim, dim_head=64, heads=8):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.to_q = torch.nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = torch.nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = torch.nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x, latents):
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, l, _ = latents.shape
        q = self.to_q(latents)
        kv_input = torch.cat((x, latents), dim=-2)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q = reshape_tensor(q, self.heads)
        k = reshape_tensor(k, self.heads)
        v = reshape_tensor(v, self.heads)
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = weight @ v
        out = out.permute(0, 2, 1, 3).reshape(b, l, -1)
        return self.to_out(out)


class Resampler(torch.nn.Module):
    def __init__(self, dim=1024, depth=8, dim_head=64, heads=16, num_queries=8,
                 embedding_dim=768, output_dim=1024, ff_mult=4):
        super().__init__()
        self.latents = torch.nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = torch.nn.Linear(embedding_dim, dim)
        self.proj_out = torch.nn.Linear(dim, output_dim)
        self.norm_out = torch.nn.LayerNorm(output_dim)
        self.layers = torch.nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(torch.nn.ModuleList([
                PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                FeedForward(dim=dim, mult=ff_mult),
            ]))

    def forward(self, x):
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        latents = self.proj_out(latents)
        return self.norm_out(latents)


class To_KV(torch.nn.Module):
    """ComfyUI_InstantID's ip_layers: one bias-free Linear per checkpoint key, "1_to_k_ip", ..."""

    def __init__(self, state_dict):
        super().__init__()
        self.to_kvs = torch.nn.ModuleDict()
        for key, value in state_dict.items():
            name = key.replace(".weight", "").replace(".", "_")
            self.to_kvs[name] = torch.nn.Linear(value.shape[1], value.shape[0], bias=False)
            self.to_kvs[name].weight.data = value


def make_resampler(proj):
    model = Resampler(dim=DIM, depth=DEPTH, dim_head=DIM_HEAD, heads=HEADS, num_queries=QUERIES,
                      embedding_dim=EMBED, output_dim=D_OUT, ff_mult=FF_MULT).double()
    model.load_state_dict({k: v.double() for k, v in proj.items()}, strict=True)
    return model.eval()


@torch.no_grad()
def project(resampler, face_embed, mode, noise):
    cond_in = combine(face_embed, mode)
    uncond_in, seed = uncond_of(cond_in, noise)
    k = cond_in.shape[0]
    cond = resampler(cond_in.double()).reshape(1, 16 * k, D_OUT)
    uncond = resampler(uncond_in.double()).reshape(1, 16 * k, D_OUT)
    return dict(cond_input=cond_in, uncond_input=uncond_in, cond=cond, uncond=uncond, seed=seed)


# ---- Spec §6: schedule (ComfyUI ModelSamplingDiscrete) and mask (CrossAttentionPatch.py) ------

def make_schedule():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return sigmas.float(), sigmas.log().float()


SIGMAS, LOG_SIGMAS = make_schedule()


def percent_to_sigma(percent):
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    percent = 1.0 - percent
    t = torch.clamp(torch.tensor(percent * 999.0).float(), min=0, max=999)
    low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
    log_sigma = (1 - w) * LOG_SIGMAS[low_idx] + w * LOG_SIGMAS[high_idx]
    return log_sigma.exp().item()


def mask_grid(oh, ow, seq_len):
    mask_h = oh / math.sqrt(oh * ow / seq_len)
    mask_h = int(mask_h) + int((seq_len % int(mask_h)) != 0)
    return mask_h, seq_len // mask_h


def batch_mask(mask, oh, ow, seq_len, cond_or_uncond, b, channels):
    """ComfyUI_InstantID CrossAttentionPatch: resize, repeat/truncate to P, tile G, pad/crop."""
    batch_prompt = b // len(cond_or_uncond)
    mask_h, mask_w = mask_grid(oh, ow, seq_len)
    mask = F.interpolate(mask.unsqueeze(1), size=(mask_h, mask_w), mode="bilinear").squeeze(1)
    if mask.shape[0] >= batch_prompt:
        mask = mask[:batch_prompt]
    else:
        mask = torch.cat((mask, mask[-1:].repeat((batch_prompt - mask.shape[0], 1, 1))), dim=0)
    mask = mask.repeat(len(cond_or_uncond), 1, 1)
    mask = mask.view(mask.shape[0], -1, 1).repeat(1, 1, channels)
    mask_len = mask_h * mask_w
    if mask_len < seq_len:
        pad_len = seq_len - mask_len
        pad1 = pad_len // 2
        mask = F.pad(mask, (0, 0, pad1, pad_len - pad1), value=0.0)
    elif mask_len > seq_len:
        crop_start = (mask_len - seq_len) // 2
        mask = mask[:, crop_start:crop_start + seq_len, :]
    return mask


def layer_mask(mask, oh, ow, seq_len):
    """[M, seq_len]: batch_mask's rows before the P/G batching."""
    m = mask.shape[0]
    return batch_mask(mask, oh, ow, seq_len, [0], m, 1)[:, :, 0]


# ---- Spec §4: the patched attn2 (ComfyUI_InstantID CrossAttentionPatch.py) --------------------

def attention(q, k, v, heads):
    b, n, c = q.shape
    dh = c // heads
    qh = q.view(b, -1, heads, dh).transpose(1, 2)
    kh = k.view(k.shape[0], -1, heads, dh).transpose(1, 2)
    vh = v.view(v.shape[0], -1, heads, dh).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-2, -1) * dh ** -0.5, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, c)


def patched_attn2(IP, q, k, v, layer, sigma, cond_or_uncond, identities, oh, ow):
    """identities: list of dicts with tokens (cond, uncond), weight, scaling, sigma range, mask."""
    heads = q.shape[2] // 64
    out = attention(q, k, v, heads)
    b, seq_len, channels = q.shape
    batch_prompt = b // len(cond_or_uncond)
    k_key, v_key = f"{2 * layer + 1}_to_k_ip", f"{2 * layer + 1}_to_v_ip"
    for ident in identities:
        weight = ident["weight"]
        if not (ident["sigma_end"] <= sigma <= ident["sigma_start"]) or weight == 0:
            continue
        cond, uncond = ident["tokens"]["cond"], ident["tokens"]["uncond"]
        k_cond = IP.to_kvs[k_key](cond).repeat(batch_prompt, 1, 1)
        k_uncond = IP.to_kvs[k_key](uncond).repeat(batch_prompt, 1, 1)
        v_cond = IP.to_kvs[v_key](cond).repeat(batch_prompt, 1, 1)
        v_uncond = IP.to_kvs[v_key](uncond).repeat(batch_prompt, 1, 1)
        ip_k = torch.cat([(k_cond, k_uncond)[i] for i in cond_or_uncond], dim=0)
        ip_v = torch.cat([(v_cond, v_uncond)[i] for i in cond_or_uncond], dim=0)
        scaling = ident["scaling"]
        if scaling == "K+mean(V) w/ C penalty":
            w = float(np.float32(weight * (float(ip_k.shape[2]) / 1280.0)))
            ip_k = ip_k * w
            ip_v_mean = torch.mean(ip_v, dim=1, keepdim=True)
            ip_v = (ip_v - ip_v_mean) + ip_v_mean * w
            out_ip = attention(q, ip_k, ip_v, heads)
        elif scaling == "K+V w/ C penalty":
            w = float(np.float32(weight * (float(ip_k.shape[2]) / 1280.0)))
            out_ip = attention(q, ip_k * w, ip_v * w, heads)
        elif scaling == "K+V":
            out_ip = attention(q, ip_k * weight, ip_v * weight, heads)
        else:
            out_ip = attention(q, ip_k, ip_v, heads) * weight
        if ident.get("mask") is not None:
            out_ip = out_ip * batch_mask(ident["mask"].double(), oh, ow, seq_len, cond_or_uncond,
                                         b, channels)
        out = out + out_ip
    return out


# ---- Cases (mirrored in tests/reference_math/golden_cases.hpp) ---------------------------------

# name: (embeddings seed, N, scale, combine, noise)
PROJECTIONS = {
    "avg": (101, 3, 1.0, "average", 0.0),
    "navg": (101, 3, 1.0, "norm average", 0.35),
    "concat": (102, 2, 1.0, "concat", 0.5),
    "single": (103, 1, 2.0, "average", 1.0),
}
# name: (seed, shape, scale) of masks at image resolution, values in [0, 1)
MASKS = {"m1": (201, (1, 48, 40)), "m2": (202, (2, 30, 20)), "m3": (203, (1, 17, 29))}

# Each case: layer, B, N, L, cond_or_uncond, sigma (None = no sigma), oh, ow, identities
# (projection, weight, scaling, start_at, end_at, mask).
CASES = {
    "vonly_text77": (("input", 4, 0), 2, 40, 77, [1, 0], 5.0, 0, 0,
                     [("avg", 0.8, "V only", 0.0, 1.0, None)]),
    "kv_text154": (("output", 0, 3), 2, 19, 154, [0, 1], 5.0, 0, 0,
                   [("avg", 0.7, "K+V", 0.0, 1.0, None)]),
    "kvc": (("input", 7, 1), 2, 21, 77, [1, 0], 5.0, 0, 0,
            [("navg", 1.5, "K+V w/ C penalty", 0.0, 1.0, None)]),
    "kmeanv": (("middle", 0, 5), 2, 21, 77, [1, 0], 5.0, 0, 0,
               [("concat", 0.6, "K+mean(V) w/ C penalty", 0.0, 1.0, None)]),
    "p2_10": (("output", 5, 1), 4, 24, 77, [1, 0], 5.0, 0, 0,
              [("navg", 1.3, "V only", 0.0, 1.0, None)]),
    "p2_01": (("output", 5, 1), 4, 24, 77, [0, 1], 5.0, 0, 0,
              [("navg", 1.3, "V only", 0.0, 1.0, None)]),
    "mask_m1_pad": (("input", 4, 1), 4, 26, 77, [1, 0], 5.0, 96, 64,
                    [("single", 0.9, "V only", 0.0, 1.0, "m1")]),
    "mask_m2_exact": (("input", 5, 0), 4, 24, 77, [1, 0], 5.0, 96, 64,
                      [("avg", 1.0, "V only", 0.0, 1.0, "m2")]),
    "mask_m2_p3": (("output", 3, 0), 3, 47, 77, [0], 5.0, 64, 96,
                   [("avg", 1.1, "K+V", 0.0, 1.0, "m2")]),
    "stack2": (("input", 8, 9), 2, 26, 77, [1, 0], 5.0, 96, 64,
               [("avg", 0.8, "V only", 0.0, 1.0, "m1"), ("concat", 0.5, "K+V", 0.0, 1.0, "m3")]),
    "gated_one": (("output", 2, 4), 2, 20, 77, [1, 0], 0.5, 0, 0,
                  [("avg", 0.8, "V only", 0.0, 0.5, None), ("single", 0.7, "V only", 0.5, 1.0, None)]),
    "gated_none": (("output", 2, 4), 2, 20, 77, [1, 0], 20.0, 0, 0,
                   [("avg", 0.8, "V only", 0.3, 1.0, None)]),
    "nosigma": (("output", 1, 0), 2, 20, 77, [1, 0], None, 0, 0,
                [("avg", 0.8, "V only", 0.0, 1.0, None), ("single", 0.7, "K+V", 0.1, 1.0, None)]),
}
TEXT_CASES = ["vonly_text77", "kv_text154"]
# (oh, ow, N) for standalone layer_mask goldens with mask m2, and resize sizes for m3.
LAYER_MASKS = [(96, 64, 26), (96, 64, 24), (64, 96, 100), (128, 128, 64), (80, 48, 77)]
RESIZES = [(9, 13), (40, 60), (17, 29), (1, 1), (5, 80)]
PERCENTS = [0.0, 1e-6, 0.001, 0.1, 0.2, 0.25, 1.0 / 3.0, 0.5, 0.6, 0.77, 0.9, 0.999, 0.9999, 1.0,
            -0.5, 1.5] + [float(x) for x in np.random.RandomState(7).rand(400)]
RAND_SEEDS = [0, 1, 42, 5489, 123456789, 1000000006]


@torch.no_grad()
def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "reference")
    os.makedirs(out_dir, exist_ok=True)
    proj, ip = make_checkpoint()
    torch.save({"image_proj": proj, "ip_adapter": ip}, os.path.join(out_dir, "model.bin"))
    flat = collections.OrderedDict()
    for k, v in proj.items():
        flat["image_proj." + k] = v
    for k, v in ip.items():
        flat["ip_adapter." + k] = v
    write_safetensors(os.path.join(out_dir, "model.safetensors"), flat,
                      {"format": "pt", "layout": "reduced(10, 64, 64, 1)"})

    resampler = make_resampler(proj)
    IP = To_KV(collections.OrderedDict((k, v.double()) for k, v in ip.items()))
    G = collections.OrderedDict()

    for i, seed in enumerate(RAND_SEEDS):
        torch.manual_seed(seed)
        G[f"rand.{i}"] = torch.rand(1000)
    G["rand.seeds"] = torch.tensor(RAND_SEEDS, dtype=torch.int64)

    tokens = {}
    for name, (seed, n, scale, mode, noise) in PROJECTIONS.items():
        r = project(resampler, hash_values(seed, (n, EMBED), scale), mode, noise)
        tokens[name] = r
        G[f"proj.{name}.cond_input"] = r["cond_input"]
        G[f"proj.{name}.uncond_input"] = r["uncond_input"]
        G[f"proj.{name}.cond"] = r["cond"]
        G[f"proj.{name}.uncond"] = r["uncond"]
        G[f"proj.{name}.seed"] = torch.tensor([r["seed"]], dtype=torch.int64)

    masks = {name: (hash_values(seed, shape, 0.5) + 0.5) for name, (seed, shape) in MASKS.items()}

    # ip K/V with the scaling transform, for one layer and each mode
    for mode in ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]:
        li = layer_index("input", 4, 0)
        ident = dict(tokens=tokens["single"], weight=0.75, scaling=mode, sigma_start=1e9,
                     sigma_end=0.0)
        wk = IP.to_kvs[f"{2 * li + 1}_to_k_ip"].weight
        kc = IP.to_kvs[f"{2 * li + 1}_to_k_ip"](ident["tokens"]["cond"][0])
        vc = IP.to_kvs[f"{2 * li + 1}_to_v_ip"](ident["tokens"]["cond"][0])
        w = 0.75
        if mode != "V only":
            if mode != "K+V":
                w = float(np.float32(0.75 * (wk.shape[0] / 1280.0)))
            kc = kc * w
            if mode == "K+mean(V) w/ C penalty":
                m = vc.mean(dim=0, keepdim=True)
                vc = (vc - m) + m * w
            else:
                vc = vc * w
        G[f"ipkv.{mode}.k_cond"] = kc
        G[f"ipkv.{mode}.v_cond"] = vc

    for case, (layer, b, n, l, cou, sigma, oh, ow, idents) in CASES.items():
        li = layer_index(*layer)
        c = LAYERS[li][3]
        seed = 1000 + 10 * list(CASES).index(case)
        q = hash_values(seed, (b, n, c), 1.0).double()
        k = hash_values(seed + 1, (b, l, c), 1.0).double()
        v = hash_values(seed + 2, (b, l, c), 1.0).double()
        specs = []
        for proj_name, weight, scaling, start_at, end_at, mask_name in idents:
            specs.append(dict(tokens=tokens[proj_name], weight=weight, scaling=scaling,
                              sigma_start=percent_to_sigma(start_at),
                              sigma_end=percent_to_sigma(end_at),
                              mask=None if mask_name is None else masks[mask_name]))
        s = 999999999.9 if sigma is None else sigma
        G[f"case.{case}.out"] = patched_attn2(IP, q, k, v, li, s, cou, specs, oh, ow)
        if case in TEXT_CASES:  # plain attention, L = 77 and 154
            G[f"case.{case}.text"] = attention(q, k, v, c // 64)

    for i, (oh, ow, n) in enumerate(LAYER_MASKS):
        G[f"layer_mask.{i}"] = layer_mask(masks["m2"], oh, ow, n)
    for i, (h, w) in enumerate(RESIZES):
        G[f"resize.{i}"] = F.interpolate(masks["m3"].unsqueeze(1), size=(h, w),
                                         mode="bilinear").squeeze(1)

    G["schedule.sigmas"] = SIGMAS
    G["schedule.log_sigmas"] = LOG_SIGMAS
    G["schedule.percents"] = torch.tensor([float(np.float32(p)) for p in PERCENTS],
                                        dtype=torch.float64)
    G["schedule.percent_to_sigma"] = torch.tensor([percent_to_sigma(float(np.float32(p)))
                                                   for p in PERCENTS], dtype=torch.float64)

    for k in list(G):
        if G[k].dtype == torch.float64 and not k.startswith("schedule."):
            G[k] = G[k].float()  # float64-evaluated goldens stored as float32 to save space
    write_safetensors(os.path.join(out_dir, "goldens.safetensors"), G,
                      {"generator": "tests/reference/make_goldens.py", "torch": torch.__version__})
    for name in ["model.bin", "model.safetensors", "goldens.safetensors"]:
        print(name, os.path.getsize(os.path.join(out_dir, name)))


if __name__ == "__main__":
    main()
