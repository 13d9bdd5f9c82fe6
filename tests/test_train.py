"""Trainer: determinism under a seed, a crashed run resumes and ends with the same weights, FDA/DACS steps run."""
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthseg.core import ParameterError
from synthseg.train import Trainer, TrainConfig, evaluate
from toys import StreetToy as Toy


class Single(Toy):
    def __len__(self):
        return 1


CFG = TrainConfig(steps=4, batch_size=2, size=(32, 64), checkpoint_every=2, lr=0.01, augment="aug12")


def weights(path):
    return load_file(path / "model.safetensors")


def test_killed_run_resumes_to_identical_weights(tmp_path):
    Trainer(CFG, Toy(), out_dir=tmp_path / "a", progress=False).fit()
    with pytest.raises(KeyboardInterrupt):  # dies during step 3, after the step-2 checkpoint
        Trainer(CFG, Toy(crash_after=5), out_dir=tmp_path / "b", progress=False).fit()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = Trainer(CFG, Toy(), out_dir=tmp_path / "b", progress=False)
    assert resumed.step == 2
    resumed.fit()
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_changed_config_in_same_folder_is_refused(tmp_path):
    Trainer(CFG, Toy(), out_dir=tmp_path, progress=False).fit()
    with pytest.raises(ParameterError, match="lr"):
        Trainer(dataclasses.replace(CFG, lr=0.1), Toy(), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("method,scale_crop", [("fda", None), ("dacs", None), ("dacs", (0.5, 1.5))])
def test_adaptation_methods_train(tmp_path, method, scale_crop):
    cfg = dataclasses.replace(CFG, method=method, steps=2, scale_crop=scale_crop, crop=(24, 24) if scale_crop else None)
    hist = Trainer(cfg, Toy(), target=Toy(offset=100), val=Toy(offset=200), out_dir=tmp_path, progress=False).fit()
    assert hist[-1]["step"] == 2 and np.isfinite(hist[-1]["loss"]) and 0 <= hist[-1]["mIoU"] <= 1


def test_method_needs_target():
    with pytest.raises(ParameterError, match="target"):
        Trainer(dataclasses.replace(CFG, method="dacs"), Toy(), progress=False)


def test_evaluate_perfect_model_scores_one():
    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # the toy images don't encode the label: use a fixed label map instead
            lbl = torch.from_numpy(Toy()[0]["label"]).long().clamp_max(18)
            return torch.nn.functional.one_hot(lbl, 19).permute(2, 0, 1)[None].float().expand(x.shape[0], -1, -1, -1)

    cm = evaluate(Oracle(), Single(), size=(32, 64))
    assert cm.summary()["mIoU"] == 1.0
