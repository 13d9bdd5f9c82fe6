"""Time synthseg.adapt.fda (batched torch) against the per-image NumPy reference formulation of FDA.

The reference is written after github.com/YanchaoYang/FDA, utils/__init__.py (FDA_source_to_target_np,
low_freq_mutate_np): one C×H×W image at a time, full complex FFTs, fftshift, window swap, ifft2, real part.

    python bench/bench_fda.py [--batch 8] [--height 512] [--width 1024] [--beta 0.01] [--repeats 3]

Prints the best-of-N time of each path and their ratio; runs the GPU path too when CUDA is available.
Goals: >= 3x on CPU, >= 50x on GPU.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthseg.adapt import fda

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"tests"))
from references import fda_reference  # noqa: E402  (the per-image NumPy reference formulation)


def best_of(fn, repeats: int, sync=lambda: None) -> float:
    "Best wall time of `repeats` calls after one warm-up call."
    fn(); sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.height, args.width)
    src, trg = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    src_np, trg_np = src.numpy(), trg.numpy()

    def numpy_path():
        return np.stack([fda_reference(s, t, args.beta) for s, t in zip(src_np, trg_np)])

    ref = numpy_path()
    err = float(np.abs(fda(src, trg, args.beta).numpy() - ref).max())
    t_np = best_of(numpy_path, args.repeats)
    t_cpu = best_of(lambda: fda(src, trg, args.beta), args.repeats)
    print(f"FDA, batch {args.batch}×3×{args.height}×{args.width}, beta {args.beta}, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"numpy reference (per image): {t_np * 1000:9.1f} ms")
    print(f"synthseg fda, CPU          : {t_cpu * 1000:9.1f} ms   {t_np / t_cpu:6.1f}x   (max |diff| {err:.1e})")
    if torch.cuda.is_available():
        s_gpu, t_gpu_in = src.cuda(), trg.cuda()
        err = float((fda(s_gpu, t_gpu_in, args.beta).cpu() - torch.from_numpy(ref)).abs().max())
        t_gpu = best_of(lambda: fda(s_gpu, t_gpu_in, args.beta), args.repeats, torch.cuda.synchronize)
        print(f"synthseg fda, {torch.cuda.get_device_name()}: {t_gpu * 1000:9.2f} ms   {t_np / t_gpu:6.1f}x   "
              f"(max |diff| {err:.1e})")


if __name__ == "__main__":
    main()
