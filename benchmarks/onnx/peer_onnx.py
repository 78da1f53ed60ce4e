#!/usr/bin/env python3
"""Peers for bench_onnx, measured in the same run on the same machine: PyTorch eager (cuDNN) on the
GPU and onnxruntime on the CPU, for the SCRFD detectors and an IResNet100 recogniser.

  convert   (here, Debian python3 with the `onnx` package): each .onnx → <name>.json (graph) +
            <name>.npz (initializers), so the device needs no `onnx` package.
  bench     (on the GPU machine: PyTorch + onnxruntime): a tiny ONNX→torch eager interpreter runs
            the SCRFD graphs; IResNet100 (spec §11, random weights) is built from
            tests/reference/make_onnx_fixtures.py, run as the torch module itself and exported to
            ONNX (TorchScript exporter) for bench_onnx and onnxruntime.

Every row is JSON with the median wall time of one host→host call (input copy, forward, output
copy, synchronise), like bench_onnx's rows.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# ---------------------------------------------------------------- convert (needs `onnx`)
def convert(models, out_dir):
    import onnx
    from onnx import numpy_helper
    os.makedirs(out_dir, exist_ok=True)
    for path in models:
        m = onnx.load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        nodes = []
        for n in m.graph.node:
            attrs = {}
            for a in n.attribute:
                v = onnx.helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    v = v.decode()
                elif isinstance(v, onnx.TensorProto):
                    arr = numpy_helper.to_array(v)
                    v = {"tensor": arr.tolist(), "dtype": str(arr.dtype), "shape": list(arr.shape)}
                elif isinstance(v, (list, tuple)):
                    v = list(v)
                attrs[a.name] = v
            nodes.append({"op": n.op_type, "inputs": list(n.input), "outputs": list(n.output), "attrs": attrs})
        graph = {"opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                 "inputs": [i.name for i in m.graph.input if i.name not in inits],
                 "outputs": [o.name for o in m.graph.output], "nodes": nodes}
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(graph, f)
        np.savez(os.path.join(out_dir, name + ".npz"), **{f"w{i}": v for i, v in enumerate(inits.values())},
                 names=np.array(list(inits.keys())))
        print("converted", path, len(nodes), "nodes")


# ---------------------------------------------------------------- torch eager interpreter
class TorchGraph:
    """Runs an ONNX graph op by op with torch eager ops on the GPU; int64 shape tensors stay numpy."""

    def __init__(self, json_path, npz_path, device, dtype):
        import torch
        self.torch = torch
        with open(json_path) as f:
            self.g = json.load(f)
        z = np.load(npz_path)
        names = list(z["names"])
        self.consts = {}
        for i, n in enumerate(names):
            arr = z[f"w{i}"]
            if arr.dtype.kind == "f":
                self.consts[n] = torch.from_numpy(arr.astype(np.float32)).to(device=device, dtype=dtype)
            else:
                self.consts[n] = arr.astype(np.int64)
        self.device, self.dtype = device, dtype

    def __call__(self, x):
        import torch
        import torch.nn.functional as F
        v = dict(self.consts)
        v[self.g["inputs"][0]] = x
        opset = self.g["opset"]
        for n in self.g["nodes"]:
            op, a = n["op"], n["attrs"]
            ins = [v[i] if i else None for i in n["inputs"]]
            if op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                y = F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, tuple(a.get("strides", [1, 1])),
                             (pads[0], pads[1]), tuple(a.get("dilations", [1, 1])), a.get("group", 1))
            elif op == "Relu":
                y = F.relu(ins[0])
            elif op == "Sigmoid":
                y = torch.sigmoid(ins[0])
            elif op == "Clip":
                lo, hi = (a.get("min"), a.get("max")) if opset < 11 else (
                    float(ins[1]) if len(ins) > 1 and ins[1] is not None else None,
                    float(ins[2]) if len(ins) > 2 and ins[2] is not None else None)
                y = torch.clamp(ins[0], lo, hi)
            elif op in ("Add", "Sub", "Mul", "Div"):
                p, q = ins
                if isinstance(p, np.ndarray) and isinstance(q, np.ndarray):
                    y = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide}[op](p, q)
                else:
                    y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](p, q)
            elif op == "AveragePool":
                pads = a.get("pads", [0, 0, 0, 0])
                y = F.avg_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), (pads[0], pads[1]),
                                 bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
            elif op == "MaxPool":
                pads = a.get("pads", [0, 0, 0, 0])
                y = F.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), (pads[0], pads[1]),
                                 ceil_mode=bool(a.get("ceil_mode", 0)))
            elif op == "GlobalAveragePool":
                y = ins[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Resize":
                sizes = ins[3] if len(ins) > 3 and ins[3] is not None and ins[3].size else None
                if sizes is not None:
                    y = F.interpolate(ins[0], size=tuple(int(s) for s in sizes[2:]), mode="nearest")
                else:
                    sc = ins[2].float().cpu().numpy()
                    y = F.interpolate(ins[0], scale_factor=tuple(float(s) for s in sc[2:]), mode="nearest")
            elif op == "Shape":
                y = np.array(ins[0].shape, dtype=np.int64)
            elif op == "Gather":
                y = np.asarray(np.take(ins[0], ins[1], axis=a.get("axis", 0)))
            elif op == "Unsqueeze":
                axes = a["axes"] if "axes" in a else list(ins[1])
                y = ins[0]
                for ax in sorted(axes):
                    y = np.expand_dims(y, ax) if isinstance(y, np.ndarray) else y.unsqueeze(ax)
            elif op == "Slice":
                starts, ends = ins[1], ins[2]
                axes = ins[3] if len(ins) > 3 else range(len(starts))
                sl = [slice(None)] * ins[0].ndim
                for s, e, ax in zip(starts, ends, axes):
                    sl[int(ax)] = slice(int(s), int(min(e, 2**62)))
                y = ins[0][tuple(sl)]
            elif op == "Concat":
                if all(isinstance(t, np.ndarray) for t in ins):
                    y = np.concatenate(ins, axis=a["axis"])
                else:
                    y = torch.cat(ins, dim=a["axis"])
            elif op == "Transpose":
                y = ins[0].permute(*a["perm"])
            elif op == "Reshape":
                shape = [int(s) if int(s) != 0 else ins[0].shape[i] for i, s in enumerate(ins[1])]
                y = ins[0].reshape(shape)
            elif op == "Flatten":
                y = torch.flatten(ins[0], a.get("axis", 1))
            elif op == "Gemm":
                b = ins[1].t() if a.get("transB", 0) else ins[1]
                y = a.get("alpha", 1.0) * (ins[0] @ b)
                if len(ins) > 2 and ins[2] is not None:
                    y = y + a.get("beta", 1.0) * ins[2]
            elif op == "BatchNormalization":
                y = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], False, 0.0, a.get("epsilon", 1e-5))
            elif op == "PRelu":
                y = torch.where(ins[0] < 0, ins[0] * ins[1], ins[0])
            elif op == "Constant":
                t = a["value"]
                arr = np.array(t["tensor"], dtype=t["dtype"]).reshape(t["shape"])
                y = arr if arr.dtype.kind != "f" else torch.from_numpy(arr).to(self.device, self.dtype)
            elif op in ("Identity", "Dropout"):
                y = ins[0]
            else:
                raise NotImplementedError(op)
            v[n["outputs"][0]] = y
        return [v[o] for o in self.g["outputs"]]


def median_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], ts[0], ts[min(len(ts) - 1, len(ts) * 9 // 10)]


def rel_l2(got, want):
    num = sum(float(np.sum((g.astype(np.float64) - w) ** 2)) for g, w in zip(got, want))
    den = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in want)
    return (num / max(den, 1e-30)) ** 0.5


def bench(args):
    import onnxruntime as ort
    import torch
    torch.backends.cudnn.benchmark = True  # the peer searches algorithms too, as our plans do
    torch.backends.cudnn.allow_tf32 = False  # f32 rows are true fp32 on both sides
    torch.backends.cuda.matmul.allow_tf32 = False
    card = torch.cuda.get_device_name(0)
    cpu = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rows = []

    def emit(**row):
        row = {"bench": "onnx", **row}
        rows.append(row)
        print(json.dumps(row), flush=True)

    rng = np.random.default_rng(123)
    jobs = []
    for name in args.scrfd:
        jobs.append((name, os.path.join(args.models_dir, name + ".onnx"), (1, 3, 640, 640)))
    if args.iresnet100:
        sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
        import make_onnx_fixtures as fx
        net = fx.build(widths=(64, 128, 256, 512), blocks=(3, 13, 30, 3), stem=64, num_features=512)
        path = args.iresnet100
        t0 = time.perf_counter()
        torch.onnx.export(net, torch.zeros(1, 3, 112, 112), path, opset_version=11, input_names=["data"],
                          output_names=["fc1"], dynamic_axes={"data": {0: "None"}, "fc1": {0: "None"}},
                          do_constant_folding=True, dynamo=False)
        print("exported", path, os.path.getsize(path), "bytes in", round(time.perf_counter() - t0, 1), "s", flush=True)
        jobs.append(("iresnet100", path, (1, 3, 112, 112)))

    for name, path, shape in jobs:
        x = rng.standard_normal(shape, dtype=np.float32)
        opts = ort.SessionOptions()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        ref = sess.run(None, feed)
        med, lo, p90 = median_ms(lambda: sess.run(None, feed), args.cpu_iters, 2)
        emit(model=name, input="x".join(map(str, shape)), backend="onnxruntime-cpu " + ort.__version__, card=cpu,
             host_threads=os.cpu_count(), iters=args.cpu_iters, median_ms=med, min_ms=lo, p90_ms=p90)
        for dtype in (torch.float32, torch.float16):
            if name == "iresnet100":
                model = fx.build(widths=(64, 128, 256, 512), blocks=(3, 13, 30, 3), stem=64,
                                 num_features=512).cuda().to(dtype)
                fwd = lambda t, m=model: [m(t)]
            else:
                base = os.path.join(args.converted, name)
                model = TorchGraph(base + ".json", base + ".npz", "cuda", dtype)
                fwd = model

            def call(fwd=fwd, dtype=dtype):
                with torch.inference_mode():
                    t = torch.from_numpy(x).cuda().to(dtype)
                    return [o.float().cpu().numpy() for o in fwd(t)]

            outs = call()
            err = rel_l2(outs, ref)
            med, lo, p90 = median_ms(call, args.gpu_iters, 5)
            # GPU-only time of the forward (CUDA events), for reference.
            t = torch.from_numpy(x).cuda().to(dtype)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.inference_mode():
                for _ in range(3):
                    fwd(t)
                start.record()
                for _ in range(args.gpu_iters):
                    fwd(t)
                end.record()
            torch.cuda.synchronize()
            emit(model=name, input="x".join(map(str, shape)),
                 backend="torch-eager-cudnn-" + ("f32" if dtype == torch.float32 else "f16") + " " + torch.__version__,
                 card=card, iters=args.gpu_iters, median_ms=med, min_ms=lo, p90_ms=p90,
                 gpu_forward_ms=start.elapsed_time(end) / args.gpu_iters, rel_l2_vs_onnxruntime=err)
    if args.out:
        with open(args.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("models", nargs="+")
    c.add_argument("--out", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--models-dir", required=True)
    b.add_argument("--converted", required=True)
    b.add_argument("--scrfd", nargs="*", default=["scrfd_2.5g", "scrfd_500m"])
    b.add_argument("--iresnet100", default="", help="path to write the exported IResNet100 .onnx")
    b.add_argument("--gpu-iters", type=int, default=50)
    b.add_argument("--cpu-iters", type=int, default=10)
    b.add_argument("--out", default="")
    args = ap.parse_args()
    if args.cmd == "convert":
        convert(args.models, args.out)
    else:
        bench(args)


if __name__ == "__main__":
    main()
