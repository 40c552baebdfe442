"""Every guide in guides/ runs to completion (offline, on shipped presets).

The training guides take one to three minutes each; the API they use is unit-tested
on every backend, so each of them runs in one backend's pass (chosen where it is
quickest) to keep CI short. The rest run in every pass.
"""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

GUIDES = sorted(pathlib.Path(__file__).parent.parent.joinpath("guides").glob("*.py"))


# Guide -> the one backend pass that runs it (measured: lit 39 / 31 / 120 s,
# contrastive_finetune 68 / 78 / 163 s, image_classifier 50 / 45 / 23 s on jax / tf / torch;
# lit_decoder 68 / 56 s on jax / torch, cappa 82 s, locca 94 s on jax; m4_balancing is numpy, 6 s;
# fractal_analysis 21 / 12 / 10 s; three_towers ~110 / ~220 s CPU on jax / torch; pali_gemma_finetune
# ~124 s CPU on jax, > 320 s on torch; lit_decoder with its reader ~120 s on torch; zero_shot_and_retrieval 48 s on jax under load).
# siglip2_recipe, m4_balancing and fractal_analysis run in every pass.
ONE_BACKEND = {
    "lit.py": "jax", "contrastive_finetune.py": "tensorflow", "image_classifier.py": "torch",
    "lit_decoder.py": "torch", "cappa.py": "jax", "locca.py": "jax",
    "zero_shot_and_retrieval.py": "torch", "three_towers.py": "jax",
    "pali_gemma_finetune.py": "jax",
}


def pinned_backend(guide):
    """The backend a guide sets for itself (e.g. JAX for device meshes), or the one
    pass that runs it, or None (every pass)."""
    if guide.name in ONE_BACKEND:
        return ONE_BACKEND[guide.name]
    for backend in ("jax", "tensorflow", "torch"):
        if f'os.environ["KERAS_BACKEND"] = "{backend}"' in guide.read_text():
            return backend
    return None


def run_guide(guide):
    pinned = pinned_backend(guide)
    if pinned not in (None, keras.backend.backend()):
        pytest.skip(f"{guide.name} runs in the {pinned} pass")
    # One thread per guide, as each test worker has one core: torch's spinning threads fighting the
    # other worker took the recipe guide from ~1 to 10 minutes (233 s vs 609 s side by side).
    result = subprocess.run(
        [sys.executable, str(guide)], capture_output=True, text=True, timeout=600,
        env={"OMP_NUM_THREADS": "1", **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a guide prints what it shows"


# One test class per guide: pytest-xdist's `--dist loadscope` keeps a class on one worker, so the
# guides (one to three minutes each) spread over the workers instead of queueing on one.
def guide_class(guide):
    @pytest.mark.slow
    def test_runs(self):
        run_guide(guide)

    name = "TestGuide_" + guide.stem
    return name, type(name, (), {"test_runs": test_runs,
                                 "__doc__": f"guides/{guide.name} runs and asserts what it prints."})


globals().update(guide_class(guide) for guide in GUIDES)
