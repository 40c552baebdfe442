"""Every guide in guides/ runs to completion (offline, on shipped presets)."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

GUIDES = sorted(pathlib.Path(__file__).parent.parent.joinpath("guides").glob("*.py"))


def pinned_backend(guide):
    """The backend a guide sets for itself (e.g. JAX for device meshes), or None."""
    for backend in ("jax", "tensorflow", "torch"):
        if f'os.environ["KERAS_BACKEND"] = "{backend}"' in guide.read_text():
            return backend
    return None


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guide_runs(guide):
    pinned = pinned_backend(guide)
    if pinned not in (None, keras.backend.backend()):
        pytest.skip(f"{guide.name} runs on {pinned} whatever the backend; tested in the {pinned} run")
    result = subprocess.run(
        [sys.executable, str(guide)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a guide prints what it shows"
