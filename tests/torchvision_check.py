#!/usr/bin/python3
"""Checks a tessera checkpoint against PyTorch.

usage: torchvision_check.py MODEL.safetensors IO.safetensors [MODEL IO ...] [--tol 1e-4]

MODEL holds a model saved by tessera (PyTorch names, metadata "model" = its spec as JSON).
IO holds "input" (N, C, H, W) and "output": what tessera computed from that input in eval
mode (logits, or pooled features when the model has no classifier).

The script builds the matching PyTorch model - torchvision's resnet18/34/50 (conv1 replaced
and maxpool removed for the cifar stem or one input channel, fc replaced by Identity without
a classifier), or a WideResNet written here to the FixMatch PyTorch port's structure and
names - loads MODEL with load_state_dict(strict=True), runs IO's input in eval mode and
compares: max |tessera - torch| <= tol * max |torch|. Prints one line per pair; exit 0 when
all agree, 1 otherwise, 77 (and a line saying why) when torch or torchvision cannot be
imported. Reads safetensors with json + struct (no safetensors package needed).
"""
import json
import struct
import sys

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision
except ImportError as e:
    print(f"SKIP: {sys.executable} cannot import torch / torchvision ({e})")
    sys.exit(77)

DTYPES = {"F32": torch.float32, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = bytearray(data[8 + n:])
    tensors = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        t = torch.frombuffer(body[begin:end], dtype=DTYPES[e["dtype"]]) if end > begin else torch.empty(0, dtype=DTYPES[e["dtype"]])
        tensors[name] = t.reshape(e["shape"]).clone()
    return tensors, meta


class PreActBlock(nn.Module):
    """One block of the FixMatch PyTorch port's WideResNet (same attribute names and data flow)."""

    def __init__(self, cin, cout, stride, activate_before_residual):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.relu1 = nn.LeakyReLU(0.1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.relu2 = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.abr = activate_before_residual

    def forward(self, x):
        if not self.equal and self.abr:
            x = self.relu1(self.bn1(x))
            a = x
        else:
            a = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(a if self.equal else x)))
        out = self.conv2(out)
        return (x if self.equal else self.convShortcut(x)) + out


class Stage(nn.Module):
    def __init__(self, n, cin, cout, stride, abr):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, abr)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, k, in_channels, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.block1 = Stage(n, w[0], w[1], 1, True)
        self.block2 = Stage(n, w[1], w[2], 2, False)
        self.block3 = Stage(n, w[2], w[3], 2, False)
        self.bn1 = nn.BatchNorm2d(w[3], momentum=0.001)
        self.relu = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(w[3], num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(self.relu(self.bn1(x)), 1).flatten(1)
        return self.fc(x)


def build(spec):
    arch = spec["arch"]
    if arch.startswith("wrn-"):
        _, depth, k = arch.split("-")
        return WideResNet(int(depth), int(k), spec["in_channels"], spec["num_classes"])
    if spec["width"] != 64:
        raise SystemExit(f"torchvision's {arch} has base width 64; this checkpoint has {spec['width']}")
    m = getattr(torchvision.models, arch)(num_classes=max(spec["num_classes"], 1))
    if spec["stem"] == "cifar":
        m.conv1 = nn.Conv2d(spec["in_channels"], 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif spec["in_channels"] != 3:
        m.conv1 = nn.Conv2d(spec["in_channels"], 64, 7, 2, 3, bias=False)
    if spec["num_classes"] == 0:
        m.fc = nn.Identity()
    return m


def check(model_path, io_path, tol):
    state, meta = read_safetensors(model_path)
    io, _ = read_safetensors(io_path)
    spec = json.loads(meta["model"])
    model = build(spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        ref = model(io["input"])
    ours = io["output"]
    if ref.shape != ours.shape:
        print(f"FAIL {spec['arch']}: torch output {tuple(ref.shape)}, tessera {tuple(ours.shape)}")
        return False
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    ok = diff <= tol * scale
    print(f"{'OK' if ok else 'FAIL'} {spec['arch']} stem={spec['stem']} in={spec['in_channels']} "
          f"classes={spec['num_classes']} input={tuple(io['input'].shape)}: strict load ok, "
          f"max|diff|={diff:.3e}, max|torch|={scale:.3e}, relative={diff / max(scale, 1e-30):.3e} (tol {tol:g})")
    return ok


def main():
    args = sys.argv[1:]
    tol = 1e-4
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i:i + 2]
    if not args or len(args) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results = [check(args[i], args[i + 1], tol) for i in range(0, len(args), 2)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
