"""The notebooks are the source of truth: synthseg/ must equal a fresh export, and notebooks carry no outputs."""
import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import synthseg

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / "nbs").rglob("*.ipynb"))


def test_synthseg_is_a_fresh_export_of_nbs(tmp_path):
    for name in ("pyproject.toml", "settings.ini"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    (tmp_path / "synthseg").mkdir()
    shutil.copy(ROOT / "synthseg" / "__init__.py", tmp_path / "synthseg" / "__init__.py")
    nbdev_export = Path(sys.executable).parent / "nbdev-export"
    subprocess.run([str(nbdev_export)], cwd=tmp_path, check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path / "synthseg"): p.read_text() for p in (tmp_path / "synthseg").rglob("*.py")}
    repo = {p.relative_to(ROOT / "synthseg"): p.read_text() for p in (ROOT / "synthseg").rglob("*.py")}
    assert sorted(map(str, repo)) == sorted(map(str, fresh)), "modules differ: run nbdev-export"
    stale = [str(k) for k in fresh if fresh[k] != repo[k]]
    assert not stale, f"synthseg/ is out of sync with nbs/ in {stale}: edit the notebooks and run nbdev-export"


def test_notebooks_are_clean(tmp_path):
    """`nbdev-clean` would change nothing (no outputs, execution counts or stray metadata)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    nbdev_clean = Path(sys.executable).parent / "nbdev-clean"
    for nb in sorted((tmp_path / "nbs").rglob("*.ipynb")):
        subprocess.run([str(nbdev_clean), "--fname", str(nb)], cwd=tmp_path, check=True, capture_output=True)
    changed = [str(p.relative_to(tmp_path)) for p in sorted((tmp_path / "nbs").rglob("*.ipynb"))
               if p.read_text() != (ROOT / p.relative_to(tmp_path)).read_text()]
    assert not changed, f"run nbdev-clean on {changed}"


def test_notebooks_carry_no_outputs():
    dirty = []
    for nb in NBS:
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                dirty.append(f"{nb.relative_to(ROOT)} cell {i}")
    assert not dirty, f"notebooks committed with outputs (run nbdev-clean): {dirty}"


def test_version_matches_settings():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    assert synthseg.__version__ == cfg["DEFAULT"]["version"]
