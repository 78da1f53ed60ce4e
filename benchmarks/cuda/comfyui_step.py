#!/usr/bin/env python3
"""Peer for bench_cuda: the attn2 work of one SDXL 1024² step, batch 2 (cond + uncond), fp16,
done as ComfyUI_InstantID does it (CrossAttentionPatch): SDPA for the text, the ip K/V projected
again at every call (cond @ to_k_ip.T, uncond @ to_k_ip.T, picked per chunk and concatenated),
a second SDPA for the ip tokens, times the weight, added to the text output.

Prints JSON rows like bench_cuda: GPU time (CUDA events around the whole 70-layer step) and wall
time (host clock around the step, synchronised), median over --reps runs.

    python3 comfyui_step.py [--reps 30]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def attention(q, k, v, heads):
    # ComfyUI's optimized_attention (pytorch path): [B, N, H*d] → SDPA → [B, N, H*d]
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, inner)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(0)
    dt = torch.float16
    torch.manual_seed(0)
    widths = [640] * 4 + [1280] * 60 + [640] * 6
    batch, text, d_out, weight = 2, 77, 2048, 0.8
    cond_or_uncond = [0, 1]
    cond = torch.randn(1, 16, d_out, device=dev, dtype=dt)
    uncond = torch.randn(1, 16, d_out, device=dev, dtype=dt)
    layers = []
    for c in widths:
        n = 4096 if c == 640 else 1024
        layers.append(dict(
            q=torch.randn(batch, n, c, device=dev, dtype=dt),
            k=torch.randn(batch, text, c, device=dev, dtype=dt),
            v=torch.randn(batch, text, c, device=dev, dtype=dt),
            wk=torch.randn(c, d_out, device=dev, dtype=dt) * 0.02,
            wv=torch.randn(c, d_out, device=dev, dtype=dt) * 0.02,
            heads=c // 64))

    def step(with_ip):
        outs = []
        for l in layers:
            q, k, v, h = l["q"], l["k"], l["v"], l["heads"]
            out = attention(q, k, v, h)
            if with_ip:
                b = q.shape[0]
                batch_prompt = b // len(cond_or_uncond)
                k_cond = (cond @ l["wk"].T).repeat(batch_prompt, 1, 1)
                k_uncond = (uncond @ l["wk"].T).repeat(batch_prompt, 1, 1)
                v_cond = (cond @ l["wv"].T).repeat(batch_prompt, 1, 1)
                v_uncond = (uncond @ l["wv"].T).repeat(batch_prompt, 1, 1)
                ip_k = torch.cat([(k_cond, k_uncond)[i] for i in cond_or_uncond], dim=0)
                ip_v = torch.cat([(v_cond, v_uncond)[i] for i in cond_or_uncond], dim=0)
                out_ip = attention(q, ip_k, ip_v, h)
                out_ip = out_ip * weight
                out = out + out_ip
            outs.append(out)
        return outs

    # Device-to-device copy ceiling measured by torch in the same process.
    a = torch.empty(1 << 29, device=dev, dtype=dt)
    bcopy = torch.empty_like(a)
    for _ in range(3):
        bcopy.copy_(a)
    ts = []
    for _ in range(args.reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        bcopy.copy_(a)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    copy_ms = statistics.median(ts)
    copy_gbs = 2 * a.numel() * 2 / (copy_ms * 1e-3) / 1e9
    print(json.dumps(dict(bench="torch_d2d_copy_1GiB", card=card, median_ms=copy_ms,
                          GB_s=round(copy_gbs, 1))), flush=True)
    del a, bcopy

    for with_ip in (True, False):
        for _ in range(3):
            step(with_ip)
        torch.cuda.synchronize()
        gpu, wall = [], []
        for _ in range(args.reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            e0.record()
            step(with_ip)
            e1.record()
            e1.synchronize()
            wall.append((time.perf_counter() - t0) * 1e3)
            gpu.append(e0.elapsed_time(e1))
        print(json.dumps(dict(
            bench="comfyui_step_attn2_" + ("instantid" if with_ip else "text_only"), card=card,
            median_ms=round(statistics.median(gpu), 5), min_ms=round(min(gpu), 5),
            max_ms=round(max(gpu), 5), wall_median_ms=round(statistics.median(wall), 5),
            reps=args.reps, layers=70, batch=batch, dtype="f16", torch=torch.__version__)),
            flush=True)


if __name__ == "__main__":
    main()
