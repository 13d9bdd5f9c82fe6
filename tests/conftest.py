"""Shared pytest fixtures: the repository root and the real dataset samples beside it."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def realdata() -> Path:
    """`shared/realdata` beside the project (genuine dataset samples); skip when this checkout has none."""
    import os
    path = Path(os.environ.get("SYNTHSEG_REALDATA", ROOT.parent / "shared" / "realdata"))
    if not path.is_dir():
        pytest.skip(f"real dataset samples not found at {path}")
    return path
