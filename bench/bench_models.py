"""Training throughput of synthseg's DeepLabV3+ R50 against segmentation_models_pytorch (smp) DeepLabV3Plus R50.

Both models are randomly initialised (no weights are downloaded) and trained on the same random batch with the same
precision (bf16 autocast + channels_last on CUDA, fp32 on CPU), optimiser (SGD, momentum 0.9) and loss (cross-entropy,
ignore 255); warm-up steps, then timed steps. Prints images/s of each, their ratio and, on CUDA, peak GPU memory.
Goal on an H100: synthseg >= 1.2x smp (smp ran 339 img/s at 512x512, batch 16, bf16).

    python bench/bench_models.py [--device cuda] [--batch 16] [--size 512x512] [--steps 50] [--compile]
    python bench/bench_models.py --profile [--device cpu]

`--profile` prints parameters, GFLOPs and latency of synthseg's BiSeNet (R18), DeepLabV2 (R101) and DeepLabV3+ (R50)
at 1024x512 beside the domain-shift report's figures.

smp is not a synthseg dependency; install it to run this bench: pip install segmentation-models-pytorch
"""
import argparse
import datetime
import platform
import sys
import time

import torch
import torch.nn.functional as F

from synthseg.models import create_model, profile_model

try:
    import segmentation_models_pytorch as smp
except ImportError:
    sys.exit("segmentation_models_pytorch is missing: pip install segmentation-models-pytorch")

REPORT = {"bisenet": (12.58, 25.78), "deeplabv2": (43.9, 375.0)}  # (params M, GFLOPs) in the domain-shift report


def describe(device: torch.device) -> str:
    "Device name, torch version and date."
    name = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{name} | torch {torch.__version__} | smp {smp.__version__} | {datetime.datetime.now():%Y-%m-%d %H:%M}"


def train_throughput(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, warmup: int, steps: int,
                     compile_model: bool) -> tuple[float, float | None]:
    "Training images/s of `model` on one fixed batch, and peak GPU memory (GiB) on CUDA."
    cuda = images.device.type == "cuda"
    model = model.to(images.device).train()
    if cuda: model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = step_model(images)
        F.cross_entropy(logits.float(), labels, ignore_index=255).backward()
        opt.step()

    if cuda: torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup): step()
    sync()
    start = time.perf_counter()
    for _ in range(steps): step()
    sync()
    ips = steps * images.shape[0] / (time.perf_counter() - start)
    return ips, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def run_throughput(args, device: torch.device) -> None:
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, h, w, generator=g).to(device)  # already "normalised" inputs
    labels = torch.randint(0, args.classes, (args.batch, h, w), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.05] = 255
    labels = labels.to(device)
    if device.type == "cuda": images = images.contiguous(memory_format=torch.channels_last)
    precision = "bf16 autocast + channels_last" if device.type == "cuda" else "fp32"
    print(f"training step, DeepLabV3+ R50 (output stride 16), batch {args.batch}, {h}x{w}, {args.classes} classes, "
          f"{precision}, SGD momentum, CE ignore 255, {args.warmup} warm-up + {args.steps} timed steps"
          f"{', torch.compile' if args.compile else ''}")
    builders = {"smp DeepLabV3Plus": lambda: smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None,
                                                               classes=args.classes),
                "synthseg deeplabv3plus": lambda: create_model("deeplabv3plus", args.classes)}
    results = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build()
        ips, mem = train_throughput(model, images, labels, args.warmup, args.steps, args.compile)
        results[name] = ips
        params = sum(p.numel() for p in model.parameters()) / 1e6
        memory = f"   peak memory {mem:5.1f} GiB" if mem else ""
        print(f"  {name:24s} {ips:8.1f} img/s   {params:5.1f} M params{memory}")
        del model
        if device.type == "cuda": torch.cuda.empty_cache()
    ratio = results["synthseg deeplabv3plus"] / results["smp DeepLabV3Plus"]
    print(f"  synthseg / smp: {ratio:.2f}x   (goal on an H100: >= 1.20x)")


def run_profile(args, device: torch.device) -> None:
    cpu = device.type == "cpu"
    warmup, runs = (0, 1) if cpu else (3, 10)
    print(f"profile at H=512, W=1024, batch 1, {args.classes} classes, fp32 eval forward, latency = median of {runs} "
          f"run(s) after {warmup} warm-up on {device.type}")
    print("FLOP convention: torch.utils.flop_counter counts 2 FLOPs per multiply-add, so GFLOPs = 2 x GMACs; "
          "papers and thop/ptflops-style tables (and, by its DeepLabV2 figure, the report) print GMACs as 'GFLOPs'")
    header = f"{'model':26s} {'params M':>9s} {'GMACs':>8s} {'GFLOPs':>8s} {'latency ms':>11s}"
    print(f"  {header}   report (params M / 'GFLOPs')")
    models = {"bisenet (R18)": lambda: create_model("bisenet", args.classes),
              "deeplabv2 (R101)": lambda: create_model("deeplabv2", args.classes),
              "deeplabv3plus (R50)": lambda: create_model("deeplabv3plus", args.classes),
              "smp DeepLabV3Plus (R50)": lambda: smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None,
                                                                   classes=args.classes)}
    for name, build in models.items():
        model = build()
        if not cpu: model = model.to(memory_format=torch.channels_last)
        p = profile_model(model, (512, 1024), device=str(device), warmup=warmup, runs=runs)
        ref = REPORT.get(name.split()[0])
        print(f"  {name:26s} {p['params_M']:9.2f} {p['GMACs']:8.1f} {p['GFLOPs']:8.1f} {p['latency_ms']:11.1f}   "
              + (f"{ref[0]} / {ref[1]}" if ref else "-"))
        del model


def parse_size(text: str) -> tuple[int, int]:
    "'HxW' -> (H, W)."
    h, w = text.lower().split("x")
    return int(h), int(w)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, help="default 16 on CUDA, 2 on CPU")
    ap.add_argument("--size", type=parse_size, help="HxW; default 512x512 on CUDA, 256x256 on CPU")
    ap.add_argument("--steps", type=int, help="timed steps; default 50 on CUDA, 5 on CPU")
    ap.add_argument("--warmup", type=int, help="untimed steps first; default 10 on CUDA, 2 on CPU")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--profile", action="store_true", help="params / GFLOPs / latency of synthseg's models at 1024x512")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (16 if gpu else 2)
    args.size = args.size or ((512, 512) if gpu else (256, 256))
    args.steps = args.steps or (50 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    torch.backends.cudnn.benchmark = True
    print(describe(device))
    if args.profile: run_profile(args, device)
    else: run_throughput(args, device)
