#!/usr/bin/env python3
"""PyTorch CPU reference for the FixMatch Fashion-MNIST recipe (configs/fixmatch-fashion-mnist-cpu.conf): steps/s.

The same step as `build/fixmatch` with that config, on the CPU, written as a PyTorch user would:
  model      WideResNet-10-2 (the FixMatch PyTorch port's layout, as models/wide_resnet.cpp:
             pre-activation blocks, leaky ReLU 0.1, BN momentum 0.001), 1x28x28 inputs, 10 classes
  batch      32 labeled images (weak view) + mu 3 x 32 unlabeled images, each a weak and a strong
             view: one forward over the 224 images, as the engine (and the port) do
  loss       cross-entropy on the labeled rows + lambda_u 1.0 x cross-entropy of the strong rows
             against the weak rows' argmax where its probability is >= 0.95 (mean over all U rows)
  optimizer  SGD lr 0.03, Nesterov momentum 0.9, weight decay 5e-4 on weight matrices only
  teacher    STS, tensor granularity: each tensor kept with p 0.5, else EMA with m 0.99; BN
             buffers copied from the student (--bn-buffers copy)
  views      weak: horizontal flip + translation by up to 4 px of the reflect-padded image;
             strong: weak, then 2 of FixMatch's 14 RandAugment operations with a random magnitude
             in 1..10 (torchvision.transforms.functional on uint8 images, one image at a time, as
             a Dataset's __getitem__ does), then Cutout with a side of 1..14 px
Images come from a fixed pool of random 28x28 images (the data never waits; the step includes
the augmentation, as the engine's loader prepares the next batch on the same two cores).

Prints the median ms/step and steps/s over the timed steps; the last line is one JSON object.

    /usr/bin/python3 bench/torch_fixmatch_step.py [--threads 2] [--steps 10] [--warmup 3]
"""
import argparse
import copy
import json
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF

MEAN, STD = 0.2860, 0.3530


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.abr = activate_before_residual

    def forward(self, x):
        a = F.leaky_relu(self.bn1(x), 0.1)
        if self.equal:
            return x + self.conv2(F.leaky_relu(self.bn2(self.conv1(a)), 0.1))
        src = a if self.abr else x
        return self.shortcut(src) + self.conv2(F.leaky_relu(self.bn2(self.conv1(src)), 0.1))


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, in_channels: int, classes: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks = []
        for stage in range(3):
            for b in range(n):
                cin = widths[stage] if b == 0 else widths[stage + 1]
                blocks.append(Block(cin, widths[stage + 1], (1 if stage == 0 else 2) if b == 0 else 1,
                                    stage == 0 and b == 0))
        self.blocks = nn.Sequential(*blocks)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.001)
        self.fc = nn.Linear(widths[3], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.leaky_relu(self.bn1(self.blocks(self.conv1(x))), 0.1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def weak(img: torch.Tensor) -> torch.Tensor:
    """img (1, 28, 28) uint8 -> flipped, translated by up to 4 px of the reflect-padded image."""
    if random.random() < 0.5:
        img = img.flip(-1)
    padded = F.pad(img.float().unsqueeze(0), (4, 4, 4, 4), mode="reflect")[0]
    y, x = random.randint(0, 8), random.randint(0, 8)
    return padded[:, y:y + 28, x:x + 28].to(torch.uint8)


def rand_augment_op(img: torch.Tensor, op: int, level: float) -> torch.Tensor:
    """One of FixMatch's 14 operations at magnitude level in (0, 1], on a (1, H, W) uint8 image."""
    sign = 1 if random.random() < 0.5 else -1
    if op == 0:
        return img
    if op == 1:
        return TF.autocontrast(img)
    if op == 2:
        return TF.equalize(img)
    if op in (3, 4, 5, 6):  # brightness, colour, contrast, sharpness: factor 1 +- 0.9 level
        factor = 1 + sign * 0.9 * level
        fn = [TF.adjust_brightness, TF.adjust_saturation, TF.adjust_contrast, TF.adjust_sharpness][op - 3]
        return fn(img, factor)
    if op == 7:
        return TF.posterize(img, 8 - int(round(4 * level)))
    if op == 8:
        return TF.solarize(img, int(256 - 256 * level))
    if op == 9:
        return TF.rotate(img, sign * 30 * level)
    if op in (10, 11):
        shear = [sign * 0.3 * level * 57.3, 0.0] if op == 10 else [0.0, sign * 0.3 * level * 57.3]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear)
    dx = int(sign * 0.3 * level * 28)
    return TF.affine(img, angle=0.0, translate=[dx, 0] if op == 12 else [0, dx], scale=1.0, shear=[0.0, 0.0])


def strong(img: torch.Tensor) -> torch.Tensor:
    img = weak(img)
    for _ in range(2):
        img = rand_augment_op(img, random.randrange(14), random.randint(1, 10) / 10)
    side = random.randint(1, 14)
    cy, cx = random.randrange(28), random.randrange(28)
    img = img.clone()
    img[:, max(0, cy - side // 2):cy + (side + 1) // 2, max(0, cx - side // 2):cx + (side + 1) // 2] = 127
    return img


def to_input(imgs) -> torch.Tensor:
    return (torch.stack(imgs).float() / 255 - MEAN) / STD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mu", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    g = torch.Generator().manual_seed(1)
    student = WideResNet(10, 2, 1, 10).train()
    teacher = copy.deepcopy(student)
    for q in teacher.parameters():
        q.requires_grad_(False)
    decay = [q for q in student.parameters() if q.ndim > 1]
    no_decay = [q for q in student.parameters() if q.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.03, momentum=0.9, nesterov=True)
    pool = (torch.rand(4096, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (4096,), generator=g)
    params = list(zip(student.parameters(), teacher.parameters()))
    buffers = list(zip(student.buffers(), teacher.buffers()))
    B, U = args.batch, args.batch * args.mu

    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        li = torch.randint(0, len(pool), (B,), generator=g)
        ui = torch.randint(0, len(pool), (U,), generator=g)
        x = torch.cat([to_input([weak(pool[j]) for j in li]), to_input([weak(pool[j]) for j in ui]),
                       to_input([strong(pool[j]) for j in ui])])
        opt.zero_grad(set_to_none=False)
        logits = student(x)
        weak_logits, strong_logits = logits[B:B + U], logits[B + U:]
        with torch.no_grad():
            conf, pseudo = weak_logits.softmax(1).max(1)
            mask = (conf >= 0.95).float()
        loss = F.cross_entropy(logits[:B], labels[li]) + \
            (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():  # STS, tensor granularity (p 0.5, m 0.99), BN buffers copied
            keep = torch.rand(len(params), generator=g) < 0.5
            for (s, t), k in zip(params, keep.tolist()):
                if not k:
                    t.mul_(0.99).add_(s, alpha=0.01)
            for s, t in buffers:
                t.copy_(s)
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    ms, cpu_ms = statistics.median(times), statistics.median(cpu)
    print(f"torch {torch.__version__} cpu, {args.threads} threads: FixMatch recipe (wrn-10-2, 1x28x28, {B} labeled + "
          f"{U} x 2 unlabeled): median {ms:.1f} ms/step ({1e3 / ms:.2f} steps/s, CPU {cpu_ms:.1f} ms/step) "
          f"over {args.steps} steps")
    print(json.dumps({"framework": "torch", "version": torch.__version__, "recipe": "fixmatch-fashion-mnist-cpu",
                      "threads": args.threads, "batch": B, "mu": args.mu, "steps": args.steps,
                      "ms_per_step": round(ms, 2), "steps_per_s": round(1e3 / ms, 3), "cpu_ms_per_step": round(cpu_ms, 2),
                      "ms_all": [round(t, 1) for t in times]}))


if __name__ == "__main__":
    main()
