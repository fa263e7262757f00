#!/usr/bin/env python3
"""PyTorch twin of the whole BYOL demo run (configs/byol-fashion-mnist-cpu.conf): training quality.

Where bench/torch_byol_step.py times one step of the recipe, this script trains it end to end on
Fashion-MNIST and evaluates it the way `build/byol` does, so tessera's accuracies can be set beside
an independent implementation's, seed for seed (issue 16: "training-quality parity"). What it
shares with the engine is the recipe, not the random numbers: the two agree in distribution
only, and a difference inside the seeds' spread is noise.

  model       ResNet-18, ImageNet stem, width 16, 1 channel (bench/torch_byol_step.py), PyTorch's
              default init for the heads; convs Kaiming normal (fan_out, relu), BN 1 / 0, as
              torchvision and models/resnet.cpp do
  heads       projector and predictor 128 -> 1024 -> 128 (Linear, BatchNorm1d, ReLU, Linear)
  data        the 60,000 train images, a new shuffle each epoch, whole batches of 128 only;
              two views per image (bench/torch_byol_step.py's augment: crop scale [0.7, 1],
              flip, brightness / contrast 0.4 with p 0.8, solarize 0 / 0.2, no blur)
  optimizer   SGD lr 0.2, momentum 0.9, weight decay 5e-4 on weight matrices only; lr warm-up
              over round(0.2 x 468) steps from lr/W, then cosine to 0 (engine/schedule.cpp)
  teacher     backbone + projector, its own BatchNorm statistics; after each step every tensor is
              kept with probability p, otherwise m_k t + (1 - m_k) s with
              m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2 (engine/teacher.cpp); --smoothing picks
              sts (p 0.7, m_0 0.96), tma (p 0), se (m 0) or none (the teacher stays the init)
  evaluation  pooled 128-d features in eval mode of the first 10,000 train images and the 10,000
              test images; kNN (k 200, T 0.1, cosine, exp(sim / T) votes) and a linear probe
              (standardised features, softmax, Adam lr 1e-3 cosine to 0, batch 256, 30 epochs,
              L2 1e-5 on the weights) as apps/run/evaluation.h describes; the same for the
              student and a random-init backbone (the student's initial weights)

    /usr/bin/python3 bench/torch_byol_demo.py --seed 0 [--threads 2] [--steps 1600] [--crop-scale-min 0.7] [--out F.json]

(1,600 steps and crops from 0.5: the recipe when the BYOL study it was written for ran; `make
demo` runs 4,000 steps with crops from 0.7 since 2026-12-03, `--steps 4000` for that.)

Prints one line per 100 steps and a final JSON line (also written to --out).
"""
import argparse
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_byol_step import ResNet18, augment, byol_loss, mlp  # noqa: E402

MEAN, STD = 0.2860, 0.3530
DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str):
    x = read_idx(f"{DATA}/{split}-images-idx3-ubyte.gz")
    y = read_idx(f"{DATA}/{split}-labels-idx1-ubyte.gz")
    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def init_backbone(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


@torch.no_grad()
def features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    out = torch.cat([backbone((images[i:i + 1000] - MEAN) / STD) for i in range(0, len(images), 1000)])
    backbone.train()
    return out


def knn_top1(train_x, train_y, test_x, test_y, k=200, t=0.1, classes=10) -> float:
    a, b = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    correct = 0
    for i in range(0, len(b), 1000):
        sim, idx = (b[i:i + 1000] @ a.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(1) == test_y[i:i + 1000]).sum().item()
    return 100.0 * correct / len(b)


def linear_probe(train_x, train_y, test_x, test_y, seed, epochs=30, batch=256, lr=1e-3, l2=1e-5, classes=10) -> float:
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    g = torch.Generator().manual_seed(1000 + seed)
    head = nn.Linear(xs.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(xs) / batch)
    total, k = epochs * steps_per_epoch, 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=g)
            for i in range(0, len(xs), batch):
                for group in opt.param_groups:
                    group["lr"] = lr * (1 + math.cos(math.pi * k / total)) / 2
                j = order[i:i + batch]
                loss = F.cross_entropy(head(xs[j]), train_y[j]) + 0.5 * l2 * head.weight.pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                k += 1
    with torch.no_grad():
        return 100.0 * (head(xt).argmax(1) == test_y).float().mean().item()


def evaluate(backbone, tr_x, tr_y, te_x, te_y, seed):
    a, b = features(backbone, tr_x), features(backbone, te_x)
    return {"linear": round(linear_probe(a, tr_y, b, te_y, seed), 2), "knn": round(knn_top1(a, tr_y, b, te_y), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--crop-scale-min", type=float, default=0.7, help="smallest crop area (the study ran 0.5)")
    p.add_argument("--smoothing", choices=["sts", "tma", "se", "none"], default="sts")
    p.add_argument("--out", default="")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(10_000 + args.seed)
    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    eval_x, eval_y = train_x[:10000], train_y[:10000]

    backbone = ResNet18(16, 1)
    init_backbone(backbone)
    projector = mlp(backbone.dim, 1024, 128)
    predictor = mlp(128, 1024, 128)
    initial = copy.deepcopy(backbone)  # the random-init baseline: the student's starting weights
    teacher = nn.ModuleList([copy.deepcopy(backbone), copy.deepcopy(projector)]).train()
    for q in teacher.parameters():
        q.requires_grad_(False)
    student = nn.ModuleList([backbone, projector, predictor]).train()
    decay = [q for q in student.parameters() if q.ndim > 1]
    no_decay = [q for q in student.parameters() if q.ndim <= 1]
    base_lr = 0.2
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=base_lr, momentum=0.9)
    pairs = list(zip(list(backbone.parameters()) + list(projector.parameters()), teacher.parameters()))
    preserve = {"sts": 0.7, "tma": 0.0, "se": 0.7, "none": 1.0}[args.smoothing]
    m0 = {"sts": 0.96, "tma": 0.96, "se": 0.0, "none": 0.0}[args.smoothing]

    steps_per_epoch = len(train_x) // 128
    warmup = round(0.2 * steps_per_epoch)
    total = args.steps
    order, start = None, time.time()
    for step in range(total):
        e, i = divmod(step, steps_per_epoch)
        if i == 0:
            order = torch.randperm(len(train_x), generator=g)
        images = train_x[order[i * 128:(i + 1) * 128]]
        if step < warmup:
            lr = base_lr * (step + 1) / warmup
        else:
            lr = base_lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
        for group in opt.param_groups:
            group["lr"] = lr
        views = [augment(images, g, 0.0, args.crop_scale_min), augment(images, g, 0.2, args.crop_scale_min)]
        opt.zero_grad(set_to_none=False)
        q = [predictor(projector(backbone(v))) for v in views]
        with torch.no_grad():
            z = [teacher[1](teacher[0](v)) for v in views]
        loss = byol_loss(q[0], z[1]) + byol_loss(q[1], z[0])
        loss.backward()
        opt.step()
        with torch.no_grad():
            m = 1 - (1 - m0) * (math.cos(math.pi * step / total) + 1) / 2 if m0 > 0 else 0.0
            keep = torch.rand(len(pairs), generator=g) < preserve
            for (s, t), k in zip(pairs, keep.tolist()):
                if not k:
                    t.mul_(m).add_(s, alpha=1 - m)
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{total} loss {loss.item():.4f} lr {lr:.4f} m {m:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    train_s = time.time() - start

    result = {"framework": "torch", "version": torch.__version__, "recipe": "byol-fashion-mnist-cpu",
              "smoothing": args.smoothing, "seed": args.seed, "steps": total, "threads": args.threads,
              "train_seconds": round(train_s)}
    for name, net in (("teacher", teacher[0]), ("student", backbone), ("baseline", initial)):
        result[name] = evaluate(net, eval_x, eval_y, test_x, test_y, args.seed)
    result["wall_seconds"] = round(time.time() - start)
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
