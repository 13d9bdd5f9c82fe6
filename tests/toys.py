"""A tiny street-like dataset shared by the trainer tests; it can simulate a process killed mid-run."""
import numpy as np
import torch

from synthseg.labels import get_space


class StreetToy(torch.utils.data.Dataset):
    """Sky above road with a car block (Cityscapes ids), noise images; raises KeyboardInterrupt after `crash_after` reads."""
    space = get_space("cityscapes")

    def __init__(self, n=6, size=(32, 64), crash_after=None, offset=0, ignore_rows=0):
        self.n, self.size, self.crash_after, self.offset, self.ignore_rows = n, size, crash_after, offset, ignore_rows
        self.reads = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        if self.crash_after is not None and self.reads > self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        rng = np.random.default_rng(i + self.offset)
        h, w = self.size
        label = np.full((h, w), 10, np.uint8)
        label[rng.integers(h // 3, 2 * h // 3):] = 0
        x0 = rng.integers(0, w - w // 5)
        label[2 * h // 3:, x0:x0 + w // 5] = 13
        label[:self.ignore_rows] = 255
        return {"image": rng.integers(0, 255, (h, w, 3)).astype(np.uint8), "label": label, "name": str(i)}
