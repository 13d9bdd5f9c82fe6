"""Scenes per second of synthseg.scenes on one CPU core: layout alone, layout + source render, layout + target render.

    python bench/bench_scenes.py [--height 256] [--width 512] [--n 20] [--rounds 15] [--warmup 10] [--cpu 0]

The process is pinned to one core (`--cpu`, default the first one it may use) and OpenCV, NumPy's BLAS/OpenMP and
torch are limited to one thread. Each mode makes `n` different scenes per round after a warm-up (texture banks
and per-size tables built); the table shows the best round's mean wall time and CPU time per scene, scenes/s from
wall time, and the ratio to the goal of 100 scenes/s at 256×512. Best-of-rounds keeps the figure meaningful on a
shared machine.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import sys
import time

import cv2

from synthseg.scenes import make_layout, render_scene

GOAL = 100.0  # scenes per second


def time_mode(fn, n: int, rounds: int, warmup: int) -> tuple[float, float]:
    "Best round's mean (wall, CPU) seconds per call of fn(i) over n different i."
    for i in range(warmup): fn(10_000 + i)
    best = (float("inf"), float("inf"))
    for r in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        for i in range(n): fn(r * n + i)
        best = min(best, ((time.perf_counter() - t) / n, (time.process_time() - c) / n))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--n", type=int, default=20, help="scenes per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the first allowed)")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0] if args.cpu is None else args.cpu})
    cv2.setNumThreads(1)
    if "torch" in sys.modules: sys.modules["torch"].set_num_threads(1)
    h, w = args.height, args.width
    modes = {
        "layout": lambda i: make_layout(h, w, i),
        "layout + source": lambda i: render_scene(make_layout(h, w, i), "source", i),
        "layout + target": lambda i: render_scene(make_layout(h, w, i), "target", i),
    }
    core = f"core {sorted(os.sched_getaffinity(0))[0]}" if hasattr(os, "sched_getaffinity") else "one core"
    print(f"synthseg.scenes at {h}x{w}, {core}, best of {args.rounds} rounds of {args.n} scenes")
    print(f"{'mode':<18}{'ms/scene':>10}{'cpu ms':>9}{'scenes/s':>10}{'vs 100/s':>10}")
    for name, fn in modes.items():
        wall, cpu = time_mode(fn, args.n, args.rounds, args.warmup)
        print(f"{name:<18}{wall * 1e3:>10.2f}{cpu * 1e3:>9.2f}{1 / wall:>10.1f}{1 / wall / GOAL:>9.2f}x")


if __name__ == "__main__":
    main()
