"""Training and sampling throughput of synthseg's mask-to-image diffusion against a plain diffusers loop.

Both sides use the same randomly initialised diffusers UNet2DModel (in_channels 3 + K + 1: noisy image and a one-hot
mask condition with an ignore channel) on synthetic random images and blocky random masks; no dataset or weights are
read. Warm-up steps, then timed steps, with torch.cuda.synchronize on CUDA. Prints images/s of each, their ratio and,
on CUDA, peak GPU memory.

Training. `DiffusionTrainer.fit` only runs over a dataset, so its step is rebuilt here from synthseg's public pieces
exactly as `fit` makes it: MaskDiffusionModel, mask_to_condition, random h-flip, channels_last, bf16 autocast,
diffusion_loss on make_scheduler(config, "ddpm"), fused AdamW, grad-norm clipping at 1, update_ema with ema_decay and
loss.item() every step (on CPU: fp32, no channels_last, unfused AdamW, as the trainer does there). `--compile`
torch.compiles synthseg's model only. The plain loop is the textbook one: UNet2DModel(in_channels=3+K+1, ...) of the
same configuration, one-hot condition, DDPMScheduler.add_noise, MSE on eps, torch.optim.AdamW (not fused), torch.autocast
bf16 on CUDA, loss.item(), no compile, no clipping, no EMA (so synthseg does strictly more work per step).
Goal on an H100: synthseg >= 2x the plain loop (which ran 319 img/s in bf16 and 521 img/s with torch.compile alone;
~114 M-parameter UNet, 128x128, batch 64, K = 19).

Sampling. synthseg's MaskToImagePipeline with DPM-Solver++ at `--fast-steps` steps (bf16 autocast on CUDA; `--compile`
compiles its model) against a plain DDIM-50 loop (diffusers DDIMScheduler with its defaults on the model's noise
schedule, fp32) on the same random-weight model, the same masks and the same initial noise. Goal: >= 4x the images/s
at comparable FID. Random weights say nothing about quality: FID parity must be checked with a trained model (e.g. the
generation_quality experiment with its sampler / sample_steps parameters); the mean absolute difference printed
between the two samplers' images is a sanity figure only.

    python bench/bench_diffusion.py [--device cuda] [--mode all|train|sample] [--batch 64] [--size 128x128]
                                    [--steps 20] [--warmup 5] [--compile] [--fast-steps 20] [--sample-batch 16]
"""
import argparse
import copy
import datetime
import platform
import time

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from synthseg.diffusion import (MaskDiffusionConfig, MaskDiffusionModel, MaskToImagePipeline, diffusion_loss,
                                ema_decay, make_scheduler, mask_to_condition, update_ema)

IGNORE = 255
PLAIN_REFERENCE = "the plain loop ran 319 img/s bf16, 521 img/s compiled on an H100"


def describe(device: torch.device) -> str:
    "Device name, torch and diffusers versions and date."
    name = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return (f"{name} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
            f"{datetime.datetime.now():%Y-%m-%d %H:%M}")


def model_config(args) -> MaskDiffusionConfig:
    "The bench's U-Net: the ~114 M-parameter diffusers example U-Net on CUDA, a tiny one on CPU."
    if args.device.type == "cuda":  # diffusers' train_unconditional example: attention at the 5th of 6 levels
        return MaskDiffusionConfig(num_classes=args.classes, sample_size=args.size,
                                   block_out_channels=(128, 128, 256, 256, 512, 512),
                                   attention_levels=(False, False, False, False, True, False))
    return MaskDiffusionConfig(num_classes=args.classes, sample_size=args.size, block_out_channels=(32, 64))


def plain_unet(cfg: MaskDiffusionConfig) -> UNet2DModel:
    "A textbook diffusers UNet2DModel of the same configuration as MaskDiffusionModel(cfg).unet."
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)]
    return UNet2DModel(sample_size=cfg.sample_size, in_channels=3 + cfg.num_classes + 1, out_channels=3,
                       layers_per_block=cfg.layers_per_block, block_out_channels=cfg.block_out_channels,
                       down_block_types=down, up_block_types=up, attention_head_dim=cfg.attention_head_dim,
                       norm_num_groups=cfg.norm_num_groups)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    "The plain loop's condition: one-hot of the classes plus an ignore channel, B×(K+1)×H×W float."
    index = torch.where(labels == IGNORE, num_classes, labels)
    return F.one_hot(index, num_classes + 1).permute(0, 3, 1, 2).float()


def random_masks(n: int, size: tuple[int, int], num_classes: int, g: torch.Generator) -> torch.Tensor:
    "n×H×W blocky random train ids (8×8-pixel cells) with ~5 % ignore pixels."
    h, w = size
    cells = torch.randint(0, num_classes, (n, -(-h // 8), -(-w // 8)), generator=g)
    masks = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w].contiguous()
    masks[torch.rand(masks.shape, generator=g) < 0.05] = IGNORE
    return masks


def params_m(model: torch.nn.Module) -> float: return sum(p.numel() for p in model.parameters()) / 1e6


def fresh_memory(device: torch.device) -> None:
    "Free cached GPU memory and reset the peak counter (no-op on CPU)."
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn, warmup: int, runs: int, device: torch.device) -> tuple[float, float | None]:
    "Seconds per call of `fn` after `warmup` untimed calls, and the peak GPU memory (GiB) on CUDA."
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(warmup): fn(i)
    sync()
    start = time.perf_counter()
    for i in range(runs): fn(warmup + i)
    sync()
    return (time.perf_counter() - start) / runs, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def synthseg_train_step(cfg: MaskDiffusionConfig, device: torch.device, compile_model: bool, images: torch.Tensor,
                        labels: torch.Tensor):
    "One DiffusionTrainer.fit step on a fixed batch, as a function of the step index; and the model."
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = MaskDiffusionModel(cfg).to(device)
    if cuda: model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=cuda)
    scheduler = make_scheduler(cfg, "ddpm")
    step_model = torch.compile(model) if compile_model else model
    model.train()

    def step(i: int) -> float:
        gen = torch.Generator(device).manual_seed(i)
        condition = mask_to_condition(labels, cfg.num_classes, cfg.ignore_index)
        flip = (torch.rand(images.shape[0], generator=gen, device=device) < 0.5)[:, None, None, None]
        x, c = torch.where(flip, images.flip(-1), images), torch.where(flip, condition.flip(-1), condition)
        if cuda: x, c = (v.contiguous(memory_format=torch.channels_last) for v in (x, c))
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.manual_seed(i)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = diffusion_loss(step_model, scheduler, x, c, gen, cfg.cond_drop_prob)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, ema_decay(i))
        return loss.item()

    return step, model


def plain_train_step(cfg: MaskDiffusionConfig, device: torch.device, images: torch.Tensor, labels: torch.Tensor):
    "One textbook diffusers training step on a fixed batch, as a function of the step index; and the U-Net."
    torch.manual_seed(0)
    unet = plain_unet(cfg).to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)

    def step(i: int) -> float:
        condition = one_hot(labels, cfg.num_classes)
        noise = torch.randn_like(images)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), device=device)
        noisy = scheduler.add_noise(images, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = unet(torch.cat([noisy, condition], 1), t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    return step, unet


def run_train(args, cfg: MaskDiffusionConfig) -> None:
    device, (h, w) = args.device, args.size
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, h, w, generator=g) * 2 - 1).to(device)
    labels = random_masks(args.batch, args.size, cfg.num_classes, g).to(device)
    cuda = device.type == "cuda"
    precision = "bf16 autocast" if cuda else "fp32"
    print(f"\ntraining step, batch {args.batch}, {h}x{w}, K={cfg.num_classes}, channels {cfg.block_out_channels}, "
          f"{precision}, {args.warmup} warm-up + {args.steps} timed steps")
    builders = {"plain diffusers loop": lambda: plain_train_step(cfg, device, images, labels),
                "synthseg trainer step": lambda: synthseg_train_step(cfg, device, args.compile, images, labels)}
    notes = {"plain diffusers loop": f"AdamW, {precision}, no compile",
             "synthseg trainer step": ("fused AdamW, channels_last, " if cuda else "AdamW, ") + precision
                                      + ", clip + EMA" + (", torch.compile" if args.compile else "")}
    results, counts = {}, {}
    for name, build in builders.items():
        fresh_memory(device)
        step, model = build()
        seconds, mem = timed(step, args.warmup, args.steps, device)
        results[name], counts[name] = args.batch / seconds, params_m(model)
        memory = f"   peak {mem:5.1f} GiB" if mem is not None else ""
        print(f"  {name:24s} {results[name]:8.1f} img/s   {counts[name]:6.1f} M params{memory}   ({notes[name]})")
        del step, model
    assert abs(counts["plain diffusers loop"] - counts["synthseg trainer step"]) < 1e-6, "U-Nets differ"
    ratio = results["synthseg trainer step"] / results["plain diffusers loop"]
    print(f"  synthseg / plain: {ratio:.2f}x   (goal on an H100: >= 2x; {PLAIN_REFERENCE})")


def plain_ddim(unet: UNet2DModel, cfg: MaskDiffusionConfig, masks: torch.Tensor, steps: int,
               seeds: list[int]) -> np.ndarray:
    "Textbook DDIM sampling in fp32: B×H×W×3 uint8 images for `masks`, initial noise from one CPU generator per seed."
    device = next(unet.parameters()).device
    scheduler = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type=cfg.prediction_type)
    scheduler.set_timesteps(steps)
    condition = one_hot(masks.to(device), cfg.num_classes)
    h, w = masks.shape[1:]
    x = torch.cat([torch.randn((1, 3, h, w), generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(torch.cat([x, condition], 1), t).sample
            x = scheduler.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def run_sample(args, cfg: MaskDiffusionConfig) -> None:
    device, (h, w), cuda = args.device, args.size, args.device.type == "cuda"
    reps = 3 if cuda else 1
    masks = random_masks(args.sample_batch, args.size, cfg.num_classes, torch.Generator().manual_seed(1))
    seeds = list(range(args.sample_batch))
    fresh_memory(device)
    torch.manual_seed(0)
    model = MaskDiffusionModel(cfg).to(device).eval()
    pipe = MaskToImagePipeline(model, "dpmsolver++")
    if args.compile: model.compile()  # in place: the pipeline's calls are compiled, model.unet's own calls are not
    warmup = 1 if args.warmup > 0 else 0
    print(f"\nsampling, batch {args.sample_batch}, {h}x{w}, K={cfg.num_classes}, same random-weight "
          f"{params_m(model):.1f} M-param model and initial noise, {warmup} warm-up + {reps} timed call(s)")
    out = {}

    def run_synthseg(i: int) -> None:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out["synthseg"] = pipe(masks, num_inference_steps=args.fast_steps, generator=gens, output_type="np")

    def run_plain(i: int) -> None:
        out["plain"] = plain_ddim(model.unet, cfg, masks, 50, seeds)

    runs = {"plain DDIM-50 fp32": run_plain,
            f"synthseg DPM++-{args.fast_steps} " + ("bf16" if cuda else "fp32")
            + (" compiled" if args.compile else ""): run_synthseg}
    results = {}
    for name, fn in runs.items():
        fresh_memory(device)
        seconds, mem = timed(fn, warmup, reps, device)
        results[name] = args.sample_batch / seconds
        memory = f"   peak {mem:5.1f} GiB" if mem is not None else ""
        print(f"  {name:34s} {results[name]:8.2f} img/s   {seconds:7.3f} s/batch{memory}")
    plain, fast = results.values()
    print(f"  synthseg / plain: {fast / plain:.2f}x   (goal: >= 4x at comparable FID)")
    mad = np.abs(out["synthseg"].astype(np.int16) - out["plain"].astype(np.int16)).mean()
    print(f"  mean |synthseg - plain| pixel difference: {mad:.2f} / 255 (random weights: a sanity figure only)")
    print("  note: weights are random here, so quality is not compared; check FID parity with a trained model, e.g. "
          "the generation_quality experiment with its sampler / sample_steps parameters")


def parse_size(text: str) -> tuple[int, int]:
    "'HxW' or 'S' -> (H, W)."
    parts = [int(v) for v in text.lower().split("x")]
    return (parts[0], parts[-1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", choices=("train", "sample", "all"), default="all")
    ap.add_argument("--batch", type=int, help="training batch; default 64 on CUDA, 4 on CPU")
    ap.add_argument("--size", type=parse_size, help="HxW; default 128x128 on CUDA, 32x32 on CPU")
    ap.add_argument("--steps", type=int, help="timed training steps; default 20 on CUDA, 3 on CPU")
    ap.add_argument("--warmup", type=int, help="untimed training steps first (sampling: one call if > 0); "
                                               "default 5 on CUDA (10 with --compile), 1 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile synthseg's model (never the plain loop's)")
    ap.add_argument("--fast-steps", type=int, default=20, help="DPM-Solver++ steps of synthseg's sampler")
    ap.add_argument("--sample-batch", type=int, help="masks per sampling call; default 16 on CUDA, 2 on CPU")
    ap.add_argument("--classes", type=int, default=19, help="K, classes of the label space")
    args = ap.parse_args()
    args.device = torch.device(args.device)
    gpu = args.device.type == "cuda"
    args.batch = args.batch or (64 if gpu else 4)
    args.size = args.size or ((128, 128) if gpu else (32, 32))
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else ((10 if args.compile else 5) if gpu else 1)
    args.sample_batch = args.sample_batch or (16 if gpu else 2)
    torch.backends.cudnn.benchmark = True
    print(describe(args.device))
    config = model_config(args)
    if args.mode in ("train", "all"): run_train(args, config)
    if args.mode in ("sample", "all"): run_sample(args, config)
