"""Time synthseg's curation and prior kernels against the peers a user would reach for.

- erode_boundaries (OpenCV dilation != erosion) vs scipy.ndimage grey dilation + erosion, image by image;
- object_consistency (one id map of all objects, two bincounts) vs a skimage.measure.label loop that masks every
  object separately (the direct reading of the definition);
- label_boundary_prior (batched torch) vs skimage.segmentation.find_boundaries, image by image;
- rectify_labels (vectorised rule) vs nothing faster to compare: its time per image is printed.

    python bench/bench_curate.py [--batch 8] [--height 512] [--width 1024] [--repeats 3]

Labels are built-in procedural scenes (realistic object counts), so the object loop sees a realistic number of objects.
"""
import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as cc_label
from skimage.segmentation import find_boundaries

from synthseg.controlled import label_boundary_prior
from synthseg.curate import erode_boundaries, object_consistency, rectify_labels
from synthseg.scenes import make_scene


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)


def object_loop(pred, cond, k, min_pixels):
    "Per object: its own boolean mask and mean, then per class, then per image."
    per_class = {}
    for c in range(k):
        objects = cc_label(cond == c, connectivity=2)
        scores = [(pred[m] == c).mean() for o in range(1, objects.max() + 1) if (m := objects == o).sum() >= min_pixels]
        if scores: per_class[c] = np.mean(scores)
    return np.mean(list(per_class.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    labels = np.stack([make_scene(s, a.height, a.width)["label"] for s in range(a.batch)])
    rng = np.random.default_rng(0)
    pred = np.where(rng.random(labels.shape) < 0.9, labels, rng.integers(0, 19, labels.shape)).astype(np.uint8)
    probs = torch.nn.functional.one_hot(torch.from_numpy(pred).long().clamp(max=18), 19).permute(0, 3, 1, 2).float()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch} of {a.height}×{a.width}")
    rows = []
    ours = best_of(lambda: erode_boundaries(labels, 2), a.repeats)
    peer = best_of(lambda: [np.where(ndimage.grey_dilation(l, size=5, mode="nearest") != ndimage.grey_erosion(l, size=5, mode="nearest"), 255, l) for l in labels], a.repeats)
    rows.append(("erode_boundaries (w=2)", "scipy grey dilation/erosion", ours, peer))
    ours = best_of(lambda: [object_consistency(p, l, 19) for p, l in zip(pred, labels)], a.repeats)
    peer = best_of(lambda: [object_loop(p, l, 19, 16) for p, l in zip(pred, labels)], 1)
    rows.append(("object_consistency", "skimage per-object loop", ours, peer))
    lt = torch.from_numpy(labels.astype(np.int64))
    ours = best_of(lambda: label_boundary_prior(lt), a.repeats)
    peer = best_of(lambda: [find_boundaries(l, connectivity=1, mode="thick") for l in labels], a.repeats)
    rows.append(("label_boundary_prior", "skimage find_boundaries", ours, peer))
    ours = best_of(lambda: rectify_labels(labels, probs, 0.9), a.repeats)
    rows.append(("rectify_labels", "-", ours, float("nan")))
    for name, peer_name, t_ours, t_peer in rows:
        print(f"{name:24s} {1e3 * t_ours / a.batch:8.2f} ms/img   {peer_name:28s} {1e3 * t_peer / a.batch:8.2f} ms/img"
              f"   speed-up {t_peer / t_ours:5.1f}×")


if __name__ == "__main__":
    main()
