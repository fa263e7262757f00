#!/usr/bin/env python3
"""PyTorch's side of `build/bench train-step` on a GPU: the same model, batch and optimizer in
several of PyTorch's execution modes, so each engine figure has PyTorch's beside it.

Model: torchvision's ResNet (resnet18 with the CIFAR stem: 3x3 stride-1 conv1, no max-pool; or
resnet50 with the ImageNet stem), a linear classifier, cross-entropy, SGD with momentum 0.9 and
lr 0.01 (the engine's bench), one fixed random batch, labels i % classes. Modes:

  fp32      no TF32 anywhere (torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False)
  tf32      TF32 for convolutions and matmuls (the engine's default --math pytorch allows it
            for convolutions; a ResNet's only matmul is its classifier)
  bf16-cl   channels_last memory format and bf16 autocast (TF32 as in tf32)
  compile   torch.compile of the model (tf32 settings), in a child process given
            --compile-timeout seconds: compiling counts against that box, not the timing

cudnn.benchmark is on in every mode (fixed shapes: what a training script sets). Each mode
prints the median ms per step over --steps timed steps after --warmup; the last line is one
JSON object with every mode ({"error": ...} for a mode that could not run), also written to
--json. On a CPU (--device cpu) the same code runs for rehearsal; tf32 then equals fp32.

    python3 bench/torch_gpu_train_step.py --arch resnet18 --stem cifar --size 32 --batch 256
    python3 bench/torch_gpu_train_step.py --arch resnet50 --stem imagenet --size 224 --batch 64 --num-classes 1000
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ALL_MODES = ["fp32", "tf32", "bf16-cl", "compile"]


def build_model(torch, arch, stem, classes):
    import torchvision.models as tvm
    model = getattr(tvm, arch)(num_classes=classes)
    if stem == "cifar":
        width = model.conv1.out_channels
        model.conv1 = torch.nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


def set_math(torch, mode):
    tf32 = mode != "fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def run_mode(torch, args, mode):
    """Times one mode; returns its result dict."""
    device = torch.device(args.device)
    set_math(torch, mode)
    torch.manual_seed(0)
    model = build_model(torch, args.arch, args.stem, args.num_classes).to(device).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % args.num_classes
    if mode == "bf16-cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step_model = model
    compile_s = None
    if mode == "compile":
        if not hasattr(torch, "compile"):
            return {"error": f"torch.compile not available in torch {torch.__version__}"}
        step_model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if mode == "bf16-cl"
                else torch.autocast(device_type=device.type, enabled=False))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=False)
        with autocast:
            loss = loss_fn(step_model(x), y)
        loss.backward()
        opt.step()
        return loss

    times, loss = [], None
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        dt = (time.perf_counter() - t0) * 1e3
        if mode == "compile" and i == 0:
            compile_s = dt / 1e3
        if i >= args.warmup:
            times.append(dt)
    ms = statistics.median(times)
    r = {"ms_per_step": round(ms, 3), "images_per_s": round(args.batch / ms * 1e3, 1),
         "ms_all": [round(t, 3) for t in times], "loss": round(float(loss), 4)}
    if compile_s is not None:
        r["first_step_s"] = round(compile_s, 1)
    if device.type == "cuda":
        r["max_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return r


def compile_in_child(args):
    """torch.compile in a child process, killed after --compile-timeout seconds."""
    cmd = [sys.executable, os.path.abspath(__file__), "--modes", "compile", "--child"]
    for k in ("arch", "stem", "size", "batch", "num_classes", "steps", "warmup", "device", "threads"):
        cmd += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not compile and run within {args.compile_timeout:.0f} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {p.returncode}: {err[:300]}"}
    r = json.loads(lines[-1])["modes"]["compile"]
    r["child_s"] = round(time.monotonic() - t0, 1)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", default=",".join(ALL_MODES), help="comma-separated subset of " + ",".join(ALL_MODES))
    p.add_argument("--compile-timeout", type=float, default=150)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--json", help="also write the final JSON object here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error(f"--modes: expected a subset of {','.join(ALL_MODES)}, found {','.join(bad)}" if bad else
                f"--batch and --steps must be >= 1 and --warmup >= 0, found {args.batch}, {args.steps}, {args.warmup}")

    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as e:
        print(json.dumps({"framework": "torch", "error": f"PyTorch not importable by {sys.executable}: {e}"}))
        return 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"framework": "torch", "version": torch.__version__,
                          "error": "torch.cuda.is_available() is False"}))
        return 3
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"framework": "torch", "version": torch.__version__, "device": args.device, "device_name": device_name,
              "cudnn": torch.backends.cudnn.version() if args.device == "cuda" else None,
              "arch": args.arch, "stem": args.stem, "size": args.size, "batch": args.batch,
              "num_classes": args.num_classes, "steps": args.steps, "warmup": args.warmup, "modes": {}}
    for mode in modes:
        t0 = time.monotonic()
        try:
            r = compile_in_child(args) if mode == "compile" and not args.child else run_mode(torch, args, mode)
        except Exception as e:  # one mode's failure (an OOM, an unsupported op) must not hide the others
            r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        r["wall_s"] = round(time.monotonic() - t0, 1)
        result["modes"][mode] = r
        if "error" in r:
            print(f"torch {mode}: not measured: {r['error']}", flush=True)
        else:
            print(f"torch {torch.__version__} {device_name} {mode}: {args.arch} {args.stem} stem, batch "
                  f"{args.batch}x3x{args.size}x{args.size}: median {r['ms_per_step']:.2f} ms/step "
                  f"({r['images_per_s']:.0f} images/s) over {args.steps} steps", flush=True)
    line = json.dumps(result)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
