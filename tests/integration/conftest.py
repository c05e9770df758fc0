import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOVRA = Path(sys.executable).with_name("sovra")


@pytest.fixture
def sovra():
    """Run the installed `sovra` console script, as a user would."""

    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        return subprocess.run([str(SOVRA), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                              timeout=120)

    assert SOVRA.exists(), f"console script missing at {SOVRA}; install with pip install -e ."
    return run
