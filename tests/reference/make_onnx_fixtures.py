#!/usr/bin/env python3
"""A small IResNet (arcface_torch backbones/iresnet.py structure, spec face_pipeline.md §11) with
random weights, exported to ONNX like arcface_torch's torch2onnx.py, plus input and PyTorch output.

Run with Debian's python3 (torch 1.13, onnx 1.12):  /usr/bin/python3 tests/reference/make_onnx_fixtures.py
Writes tests/data/onnx/iresnet_small.onnx and iresnet_small.safetensors (input, output).

Same module as IResNet100 except widths and block counts: stem 3->8, layers (8, 16, 16, 32) with
(1, 2, 1, 1) IBasicBlocks, bn2, flatten, dropout(0), fc 32*7*7 -> 24, features BatchNorm1d(24).
`build(widths, blocks, features)` is reused by benchmarks/onnx/peer_onnx.py for IResNet100.
"""
import json
import os
import struct

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "onnx")


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, widths=(64, 128, 256, 512), blocks=(3, 13, 30, 3), stem=64, num_features=512):
        super().__init__()
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-05)
        self.prelu = nn.PReLU(stem)
        self.layer1 = self._make_layer(widths[0], blocks[0], 2)
        self.layer2 = self._make_layer(widths[1], blocks[1], 2)
        self.layer3 = self._make_layer(widths[2], blocks[2], 2)
        self.layer4 = self._make_layer(widths[3], blocks[3], 2)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=0, inplace=True)
        self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes, blocks, stride):
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        x = self.features(x)
        return x


def build(widths, blocks, stem, num_features, seed=0):
    """Random but well-conditioned weights: BN statistics and PReLU slopes are non-trivial."""
    torch.manual_seed(seed)
    net = IResNet(widths, blocks, stem, num_features)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                if m is not net.features:
                    m.weight.uniform_(0.5, 1.5)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    return net.eval()


def export(net, path, batch_dim_param="None"):
    import onnx
    dummy = torch.zeros(1, 3, 112, 112)
    torch.onnx.export(net, dummy, path, opset_version=11, input_names=["data"], output_names=["fc1"],
                      dynamic_axes={"data": {0: batch_dim_param}, "fc1": {0: batch_dim_param}},
                      do_constant_folding=True)
    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch_dim_param
    onnx.save(model, path)
    return model


def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
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
    net = build(widths=(8, 16, 16, 32), blocks=(1, 2, 1, 1), stem=8, num_features=24)
    path = os.path.join(OUT, "iresnet_small.onnx")
    model = export(net, path)
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    torch.manual_seed(1)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = net.double()(x.double()).float()  # float64 reference
    save_safetensors(os.path.join(OUT, "iresnet_small.safetensors"), {"input": x.numpy(), "output": y.numpy()})
    print(path, os.path.getsize(path), "bytes", ops, "output", tuple(y.shape))


if __name__ == "__main__":
    main()
