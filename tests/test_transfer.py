"""The low-effort transfer pipeline: stage-by-stage resume, pinned settings, the table's shape."""
import shutil

import numpy as np
import pytest

import synthseg.transfer as transfer
from synthseg.core import ParameterError
from synthseg.transfer import ROWS, TransferConfig, low_effort_transfer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "One tiny pipeline run shared by the tests of this module (they run in file order)."
    tmp = tmp_path_factory.mktemp("transfer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHSEG_DATA", str(tmp / "data"))
        cfg = TransferConfig.preset("tiny")
        yield cfg, tmp / "run", low_effort_transfer(cfg, tmp / "run", progress=False)


def stamps(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_table_and_pieces(tiny_run):
    cfg, run, res = tiny_run
    assert list(res.table.index) == list(ROWS.values())
    assert res.table.loc[ROWS["generated"], "images"] == 6 and res.table.loc[ROWS["filtered"], "images"] == 3
    assert res.manifest["kept"].sum() == 3 and res.manifest["score_consistency"].notna().all()
    assert set(res.rectification.columns) == {"pixels", "to_ignore", "relabelled", "changed_share"}
    assert all(m.shape == (19, 19) for m in res.matrices.values())
    # the generated labels are the source maps (classes unknown to the target model as ignore)
    gen = transfer.load_dataset("synthseg", run / "generated", "train")
    hidden = [res.space.classes.index(c) for c in res.unseen.index]
    assert not np.isin(gen[0]["label"], hidden).any()


def test_crash_in_generation_resumes_there(tiny_run, monkeypatch):
    cfg, run, res = tiny_run
    before = {s: stamps(run / s) for s in ("pseudo_labels", "diffusion", "segmenters/fda")}
    # lose the last generated image and everything after generation, as a crash during generation would
    (run / "generated" / "images" / "train" / "gen_000005.png").unlink()
    for s in ("rectified", "segmenters/generated", "segmenters/filtered", "segmenters/rectified"):
        shutil.rmtree(run / s)
    calls = []
    real = transfer.generate_dataset
    monkeypatch.setattr(transfer, "generate_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = low_effort_transfer(cfg, run, progress=False)
    assert calls and all(stamps(run / s) == before[s] for s in before)  # nothing before generation was redone
    assert (run / "generated" / "images" / "train" / "gen_000005.png").is_file()
    assert list(again.table.index) == list(res.table.index)


def test_other_settings_refused(tiny_run):
    cfg, run, _ = tiny_run
    with pytest.raises(ParameterError, match="differs in erode"):
        low_effort_transfer(TransferConfig.preset("tiny", erode=3), run, progress=False)


def test_bad_settings():
    with pytest.raises(ParameterError, match="pseudo_from"):
        TransferConfig(pseudo_from="oracle")
    with pytest.raises(ParameterError, match="preset must be one of"):
        TransferConfig.preset("huge")
    with pytest.raises(ParameterError, match="filter_top"):
        TransferConfig(filter_top=0)
