"""Confusion-matrix speed: synthseg.metrics.confusion_matrix against sklearn.metrics.confusion_matrix on the same
label maps (default: 8 Cityscapes-sized 512x1024 maps, 19 classes plus ignore), best of N runs after a warm-up.
On CUDA, the GPU path is timed too. Goal: synthseg >= 10x faster than sklearn on CPU.

    python bench/bench_metrics.py [--images 8] [--height 512] [--width 1024] [--classes 19] [--repeats 5] [--threads N]

scikit-learn is not a synthseg dependency; install it to run this bench: pip install scikit-learn
"""
import argparse
import sys
import time

import numpy as np
import torch

from synthseg.metrics import confusion_matrix


def best_times(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Fastest of `repeats` timed calls of each function, after one untimed warm-up call each. Calls are
    interleaved so that background load on the machine hits every function alike."""
    for fn in fns.values():
        fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def make_labels(images: int, height: int, width: int, classes: int, seed: int = 0):
    """uint8 targets with ~10% ignore (255) and int64 predictions that are right on ~80% of counted pixels."""
    rng = np.random.default_rng(seed)
    shape = (images, height, width)
    target = rng.integers(0, classes, shape, dtype=np.uint8)
    target[rng.random(shape) < 0.1] = 255
    pred = np.where(rng.random(shape) < 0.8, target, rng.integers(0, classes, shape)).astype(np.int64)
    pred[target == 255] = rng.integers(0, classes, int((target == 255).sum()))
    return pred, target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (best is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    try:
        from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    except ImportError:
        print("this bench compares against scikit-learn, which is not installed: pip install scikit-learn")
        return 1

    pred, target = make_labels(a.images, a.height, a.width, a.classes)
    labels = np.arange(a.classes)
    pixels = target.size
    print(f"{a.images} maps of {a.height}x{a.width} ({pixels / 1e6:.1f} M pixels), {a.classes} classes + ignore 255; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; best of {a.repeats}")

    def sklearn_cm():
        keep = target != 255
        return sk_confusion_matrix(target[keep], pred[keep], labels=labels)

    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    expected = sklearn_cm()
    assert (confusion_matrix(pred_t, target_t, a.classes).numpy() == expected).all(), "results differ from sklearn"

    best = best_times({"sklearn": sklearn_cm, "cpu": lambda: confusion_matrix(pred_t, target_t, a.classes)}, a.repeats)
    t_sk, t_cpu = best["sklearn"], best["cpu"]
    print(f"sklearn.metrics.confusion_matrix   {1000 * t_sk:9.1f} ms")
    print(f"synthseg confusion_matrix (CPU)    {1000 * t_cpu:9.1f} ms   {t_sk / t_cpu:6.1f}x faster")
    if torch.cuda.is_available():
        pred_g, target_g = pred_t.cuda(), target_t.cuda()
        assert (confusion_matrix(pred_g, target_g, a.classes).cpu().numpy() == expected).all()
        t_gpu = best_times({"gpu": lambda: confusion_matrix(pred_g, target_g, a.classes)}, a.repeats,
                           torch.cuda.synchronize)["gpu"]
        print(f"synthseg confusion_matrix (CUDA)   {1000 * t_gpu:9.1f} ms   {t_sk / t_gpu:6.1f}x faster "
              f"({torch.cuda.get_device_name()}, inputs already on the GPU)")
    else:
        print("no CUDA device: GPU path not timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
