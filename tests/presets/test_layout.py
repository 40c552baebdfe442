"""The preset catalogue lives in the top-level `presets/` folder and installs as
`keras_siglip.presets`: a wheel built from the checkout carries the cards, the
recipes and every file of the shipped presets."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import keras
import pytest

import keras_siglip.presets as catalogue

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="packaging: the same on every backend")
def test_a_built_wheel_carries_the_catalogue(tmp_path):
    assert (ROOT / "presets" / "__init__.py").is_file() and not (ROOT / "keras_siglip" / "presets").exists()
    # From a copy without build leftovers (a stale build/ folder could hold old files).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "outputs", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__.py", "siglip2_recipes.py", "train_shapes.py"):
        assert f"keras_siglip/presets/{module}" in names
    for name, folder in catalogue.SHIPPED_PRESETS.items():
        for root, _, files in os.walk(folder):
            for file in files:
                relative = os.path.relpath(os.path.join(root, file), catalogue.PRESETS_DIR).replace(os.sep, "/")
                assert f"keras_siglip/presets/{relative}" in names, f"{relative} is not installed"
