#!/usr/bin/env python3
"""PyTorch CPU reference for the BYOL demo recipe (configs/byol-fashion-mnist-cpu.conf): pairs/s.

The same step as `build/byol` with that config, on the CPU: ResNet-18 with the ImageNet stem
(7x7/2 conv + 3x3/2 max-pool), base width 16, 1x28x28 inputs, 128-d features; projector
128-1024-128 and predictor 128-1024-128 (Linear, BatchNorm1d, ReLU, Linear); batch 128 images,
two augmented views each; the student runs both views, the teacher (backbone + projector, its
own BatchNorm statistics, no gradient) both views; symmetric BYOL loss 2 - 2 cos; SGD lr 0.2,
momentum 0.9, weight decay 5e-4 except biases and norms; then the STS teacher update (tensor
granularity, preserve probability 0.7, momentum 0.96).

Augmentation, batched on the CPU like the engine's (kernels/common/augment_pipeline.h): random
resized crop with scale [0.7, 1] and ratio [3/4, 4/3] plus horizontal flip as one bilinear
affine resampling per image (affine_grid + grid_sample), then per image with probability 0.8
brightness and contrast jitter (0.4), grey (a no-op on one channel), no blur (the config sets
0), solarize with probability 0.2 on the second view, and normalisation. Images are drawn from a
fixed pool of 4096 random 28x28 images, as `build/bench augment` does: the data never waits.

Prints the median pairs/s (images of the batch per second; each has two views) over the timed
steps; the last line is one JSON object.

    /usr/bin/python3 bench/torch_byol_step.py [--threads 2] [--batch 128] [--steps 10] [--warmup 3]
"""
import argparse
import copy
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)
        return F.relu(out, inplace=True)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout with any base width (torchvision's BasicBlock allows only 64)."""

    def __init__(self, width: int, in_channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for stage in range(4):
            cout = width << stage
            for b in range(2):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.dim = cin

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def mlp(i: int, h: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, o))


def augment(images: torch.Tensor, g: torch.Generator, solarize_p: float, crop_min: float = 0.7) -> torch.Tensor:
    """images (N, 1, 28, 28) in [0, 1] -> one augmented view, normalised."""
    n = images.shape[0]
    # Random resized crop: area fraction in [crop_min, 1] (the recipe's crop-scale-min), log-uniform
    # aspect in [3/4, 4/3], clipped to the image; centre anywhere the crop fits. Flip: the x scale's sign.
    area = crop_min + (1 - crop_min) * torch.rand(n, generator=g)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=g)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Colour jitter with probability 0.8: brightness, then contrast against the image's mean.
    jitter = (torch.rand(n, 1, 1, 1, generator=g) < 0.8).float()
    bright = 1 + jitter * (torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4)
    contrast = 1 + jitter * (torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4)
    x = (x * bright).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (contrast * x + (1 - contrast) * mean).clamp(0, 1)
    if solarize_p > 0:
        sol = torch.rand(n, 1, 1, 1, generator=g) < solarize_p
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
    return (x - 0.2860) / 0.3530


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    backbone = ResNet18(16, 1)
    projector = mlp(backbone.dim, 1024, 128)
    predictor = mlp(128, 1024, 128)
    student = nn.ModuleList([backbone, projector, predictor]).train()
    teacher = nn.ModuleList([copy.deepcopy(backbone), copy.deepcopy(projector)]).train()
    for q in teacher.parameters():
        q.requires_grad_(False)
    decay = [q for n_, q in student.named_parameters() if q.ndim > 1]
    no_decay = [q for n_, q in student.named_parameters() if q.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.2, momentum=0.9)
    pool = torch.rand(4096, 1, 28, 28, generator=g)
    pairs = list(zip(list(backbone.parameters()) + list(projector.parameters()), teacher.parameters()))

    times, cpu = [], []  # wall, and the process's CPU time (all threads: steadier on shared cores)
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        idx = torch.randint(0, pool.shape[0], (args.batch,), generator=g)
        images = pool[idx]
        views = [augment(images, g, 0.0), augment(images, g, 0.2)]
        opt.zero_grad(set_to_none=False)
        q = [predictor(projector(backbone(v))) for v in views]
        with torch.no_grad():
            z = [teacher[1](teacher[0](v)) for v in views]
        loss = byol_loss(q[0], z[1]) + byol_loss(q[1], z[0])
        loss.backward()
        opt.step()
        with torch.no_grad():  # STS, tensor granularity: each tensor kept with p = 0.7, else EMA
            keep = torch.rand(len(pairs), generator=g) < 0.7
            for (s, t), k in zip(pairs, keep.tolist()):
                if not k:
                    t.mul_(0.96).add_(s, alpha=0.04)
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    ms = statistics.median(times)
    cpu_ms = statistics.median(cpu)
    pairs_per_s = args.batch / ms * 1e3
    print(f"torch {torch.__version__} cpu, {args.threads} threads: BYOL demo recipe (resnet18 imagenet-stem width 16, "
          f"1x28x28, batch {args.batch} pairs): median {ms:.1f} ms/step ({pairs_per_s:.1f} pairs/s, CPU {cpu_ms:.1f} ms/step) "
          f"over {args.steps} steps")
    print(json.dumps({"framework": "torch", "version": torch.__version__, "recipe": "byol-fashion-mnist-cpu",
                      "threads": args.threads, "batch": args.batch, "steps": args.steps,
                      "ms_per_step": round(ms, 2), "pairs_per_s": round(pairs_per_s, 1), "cpu_ms_per_step": round(cpu_ms, 2),
                      "ms_all": [round(t, 1) for t in times]}))


if __name__ == "__main__":
    main()
