#!/usr/bin/env python3
"""Per-layer timing of PyTorch's CPU conv2d (forward, and backward to input and weight) on the
ResNet-18 cifar-stem layer shapes, batch 64; the counterpart of bench/conv_layers.cpp. Times are
process CPU time (all threads), the best of 7 runs, so that they stay comparable on busy cores.

    /usr/bin/python3 bench/torch_conv_layers.py [--threads 2]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

LAYERS = [  # name, count per forward, in, out, size, kernel, stride
    ("conv1 3-64 32px", 1, 3, 64, 32, 3, 1), ("layer1 64-64 32px", 4, 64, 64, 32, 3, 1),
    ("layer2.0 64-128 s2", 1, 64, 128, 32, 3, 2), ("layer2 ds 1x1 s2", 1, 64, 128, 32, 1, 2),
    ("layer2 128-128 16px", 3, 128, 128, 16, 3, 1), ("layer3.0 128-256 s2", 1, 128, 256, 16, 3, 2),
    ("layer3 ds 1x1 s2", 1, 128, 256, 16, 1, 2), ("layer3 256-256 8px", 3, 256, 256, 8, 3, 1),
    ("layer4.0 256-512 s2", 1, 256, 512, 8, 3, 2), ("layer4 ds 1x1 s2", 1, 256, 512, 8, 1, 2),
    ("layer4 512-512 4px", 3, 512, 512, 4, 3, 1),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    total_f = total_b = 0.0
    print(f"{'layer':22s} {'count':>5s} {'fwd ms':>10s} {'bwd ms':>10s}")
    for name, count, c, o, size, k, stride in LAYERS:
        x = torch.randn(args.batch, c, size, size, requires_grad=(c != 3))
        w = torch.randn(o, c, k, k, requires_grad=True)
        tf, tb = [], []
        for r in range(8):
            t0 = time.process_time()
            y = F.conv2d(x, w, None, stride, k // 2)
            t1 = time.process_time()
            y.backward(y.detach())
            t2 = time.process_time()
            if r:
                tf.append((t1 - t0) * 1e3)
                tb.append((t2 - t1) * 1e3)
        f, b = min(tf), min(tb)
        total_f += f * count
        total_b += b * count
        print(f"{name:22s} {count:5d} {f:10.2f} {b:10.2f}")
    print(f"sum over one resnet18 step: forward {total_f:.1f} ms, backward {total_b:.1f} ms, "
          f"total {total_f + total_b:.1f} ms")
    print(json.dumps({"conv_forward_ms": round(total_f, 1), "conv_backward_ms": round(total_b, 1)}))


if __name__ == "__main__":
    main()
