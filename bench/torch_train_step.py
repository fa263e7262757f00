#!/usr/bin/env python3
"""PyTorch CPU reference for `build/bench train-step`: the same model, batch and optimizer.

ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool), base width 64, 3x32x32 inputs,
batch 64, cross-entropy on 10 classes, SGD with momentum 0.9. Times forward + backward + the
optimizer step and prints the median ms/step after warm-up; the last line is one JSON object.

    /usr/bin/python3 bench/torch_train_step.py [--threads 2] [--batch 64] [--steps 10] [--warmup 3]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torchvision  # noqa: F401  (only to say which version built the model)
from torchvision.models import resnet18


def cifar_resnet18(width: int, num_classes: int) -> nn.Module:
    model = resnet18(num_classes=num_classes, width_per_group=width)
    if width != 64:
        raise SystemExit("torchvision's BasicBlock resnet18 supports only width 64")
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cifar_resnet18(64, 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    times, cpu = [], []  # wall, and the process's CPU time (all threads: steadier on shared cores)
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    ms = statistics.median(times)
    cpu_ms = statistics.median(cpu)
    print(f"torch {torch.__version__} cpu, {args.threads} threads: resnet18 cifar-stem width 64, "
          f"batch {args.batch}x3x{args.size}x{args.size}: median {ms:.1f} ms/step "
          f"({args.batch / ms * 1e3:.1f} images/s, CPU {cpu_ms:.1f} ms/step) over {args.steps} steps")
    print(json.dumps({"framework": "torch", "version": torch.__version__, "threads": args.threads,
                      "batch": args.batch, "size": args.size, "steps": args.steps,
                      "ms_per_step": round(ms, 2), "images_per_s": round(args.batch / ms * 1e3, 1),
                      "cpu_ms_per_step": round(cpu_ms, 2),
                      "ms_all": [round(t, 1) for t in times]}))


if __name__ == "__main__":
    main()
