"""Experiment notebooks: one tagged parameters cell each, and a tiny papermill run of each into a run folder."""
import json

import pandas as pd
import pytest

from synthseg.cli import main
from synthseg.core import ParameterError
from synthseg.runs import collect_runs, experiment_parameters, experiments_dir, list_experiments, run_experiment


@pytest.mark.parametrize("name", list_experiments())
def test_one_parameters_cell_of_literals(name):
    cells = json.loads((experiments_dir() / f"{name}.ipynb").read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    spec = experiment_parameters(name)
    assert "size" in spec and "out_dir" in spec
    assert all(v["help"] for v in spec.values()), "every parameter has a comment"


def test_domain_shift_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    folder = run_experiment("domain_shift", {"size": "tiny", "methods": '["none", "fda", "dacs", "oracle"]'},
                            root=tmp_path / "runs", progress=False)
    assert folder.parent == tmp_path / "runs" / "domain_shift"
    for name in ("domain_shift.ipynb", "parameters.json", "metrics.json", "table3.csv", "iou_bars.png"):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "table3.csv", index_col=0)
    assert list(table.index) == ["No augmentation", "FDA (β=0.01)", "DACS", "Oracle (target)"]
    assert "road" in table.columns and table["mIoU"].between(0, 1).all()
    runs = collect_runs("domain_shift", tmp_path / "runs")
    assert len(runs) == 1 and runs.loc[0, "param.size"] == "tiny"


def test_unknown_experiment_and_parameter(capsys):
    with pytest.raises(ParameterError, match="domain_shift"):
        run_experiment("domain_shifts")
    assert main(["run", "domain_shift", "-p", "stepz", "5"]) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and "steps" in err and "\n" == err[-1] and err.count("\n") == 1


def test_failing_experiment_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    code = main(["run", "domain_shift", "-p", "size", "tiny", "-p", "source", "gta5", "--root", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "domain_shift.ipynb: cell" in err and "source_root" in err


def test_generation_quality_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    folder = run_experiment("generation_quality", {"size": "tiny", "guidance": "1.5"}, root=tmp_path / "runs",
                            progress=False)
    for name in ("table1.csv", "augmentation.csv", "consistency_per_class.csv", "metrics.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "not comparable" in metrics["features"]  # no Inception weights here: the stand-in is labelled
    assert 0 <= metrics["consistency_mIoU"] <= 1 and -1 <= metrics["SSIM"] <= 1
    from synthseg.generate import read_manifest
    manifest = read_manifest(folder / "generated")
    assert set(manifest["split"]) == {"train", "val"} and manifest["guidance_scale"].eq(1.5).all()


def test_low_effort_transfer_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    folder = run_experiment("low_effort_transfer", {"size": "tiny"}, root=tmp_path / "runs", progress=False)
    for name in ("table.csv", "iou_bars.png", "metrics.json", "pipeline/config.json", "pipeline/generated/dataset.json"):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "table.csv", index_col=0)
    assert list(table.index) == ["Source only", "FDA-translated source", "Generated", "Generated + filtering",
                                 "Generated + filtering + rectification"]
    assert table["mIoU"].between(0, 100).all() and list(table["images"]) == [6, 6, 6, 3, 3]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "FDA" in metrics["verdict"] and set(metrics["stage_seconds"]) >= {"pseudo-labels", "generation"}


def test_augmentation_ablation_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    folder = run_experiment("augmentation_ablation", {"size": "tiny"}, root=tmp_path / "runs", progress=False)
    for name in ("components_iou.png", "metrics.json", "study/components.csv", "study/omega.csv",
                 "study/gen/balanced-x1/final_train.csv"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["backend"] == "own" and "no Stable Diffusion weights" in metrics["note"]
    assert set(metrics["n_gen/R/S = 1"]) >= {"entropy", "cir", "mIoU"}


def test_generation_quality_tiny_run_on_real_camvid(tmp_path, monkeypatch, realdata):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    folder = run_experiment("generation_quality", {"size": "tiny", "dataset": "camvid", "root": str(realdata / "camvid")},
                            root=tmp_path / "runs", progress=False)
    table = pd.read_csv(folder / "table1.csv", index_col=0)
    assert list(table.index) == ["camvid 32x64"] and 0 <= table["Pixel acc. (%)"].iloc[0] <= 100
