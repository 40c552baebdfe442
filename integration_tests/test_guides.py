"""Every guide in guides/ runs to completion (offline, on shipped presets)."""

import os
import pathlib
import subprocess
import sys

import pytest

GUIDES = sorted(pathlib.Path(__file__).parent.parent.joinpath("guides").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guide_runs(guide):
    result = subprocess.run(
        [sys.executable, str(guide)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a guide prints what it shows"
