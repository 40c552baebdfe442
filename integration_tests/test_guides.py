"""Every guide in guides/ runs to completion on every backend (offline, on shipped
presets) and asserts what it prints.

A guide with a `--quick` option runs it here: smaller data or fewer steps, the same
claims asserted (each guide's docstring gives both configurations and their numbers).
Where the quick configuration leaves a claim out, one backend's pass runs the full guide.
A guide runs under the backend of the pass (it may default one, never override it).
"""

import ctypes.util
import os
import pathlib
import subprocess
import sys

import keras
import pytest

# The guides by their test time over the three passes of a CI run (seconds, 2-core machine), the
# longest first: the workers take them in this order (conftest), so no long guide starts last.
# A guide not listed yet goes first.
LONGEST_FIRST = (
    "lit_decoder.py",  # 400
    "locca.py",  # 385
    "pali_gemma_finetune.py",  # 382
    "siglip2_recipe.py",  # 318
    "fractal_detection.py",  # 248
    "cappa.py",  # 175
    "image_classifier.py",  # 158
    "contrastive_finetune.py",  # 157
    "navit.py",  # 156
    "three_towers.py",  # 148
    "training_at_scale.py",  # 133
    "lit.py",  # 94
    "m4_model_bias.py",  # 88
    "fractal_analysis.py",  # 62
    "zero_shot_and_retrieval.py",  # 61
    "m4_balancing.py",  # 28
)
GUIDES = sorted(pathlib.Path(__file__).parent.parent.joinpath("guides").glob("*.py"),
                key=lambda path: LONGEST_FIRST.index(path.name) + 1 if path.name in LONGEST_FIRST else 0)

# Guide -> the pass that runs its full configuration (the quick one leaves a claim out).
FULL_IN = {"lit_decoder.py": "torch"}
# Guides that mostly compile on JAX keep the tests' fast-compiling XLA settings (conftest): measured
# side by side on one thread each, siglip2_recipe (900 short steps, two training stages, four models)
# took 134 s instead of 178 s with the same results (122 s once the legacy fusion emitters came in,
# against 165 s with the default ones); pali_gemma_finetune, which trains longer, 191 s instead of
# 138 s, fractal_detection 201 s instead of 101 s, so they keep XLA's defaults. Short guides
# compile more than they train: zero_shot_and_retrieval 29 s instead of 39 s, fractal_analysis 25
# instead of 33, m4_model_bias 28 instead of 39, training_at_scale 38 instead of 52 (lit, navit,
# three_towers, image_classifier, contrastive_finetune and cappa within 5% either way).
UNOPTIMISED_ON_JAX = {"siglip2_recipe.py", "zero_shot_and_retrieval.py", "fractal_analysis.py",
                      "m4_model_bias.py", "training_at_scale.py"}
# conftest's compile-time flags; a guide running optimised drops them all (locca with only the
# legacy fusion emitters: 177 s instead of 152 s, its compiled steps run slower).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")

# Memory allocator. XLA:CPU takes each run's temporaries as one large buffer, which glibc's malloc
# maps from the kernel and unmaps again at every step, so training faults in fresh zeroed pages all
# the time: the JAX LocCa guide took 13.4 million page faults and 29 s of system time in 102 s.
# tcmalloc keeps freed memory for reuse (0.56 million faults, 4 s): the sixteen guides on JAX, two
# side by side, took 553 s instead of 676 s, printing the same numbers. Only the guides get it: the
# test workers stay on glibc's malloc, whose return of freed memory tests/utils/test_memory checks
# (two of its tests failed with every worker on tcmalloc). CI installs Debian's libtcmalloc-minimal4;
# without it, or with KERAS_SIGLIP_TEST_TCMALLOC=0, the guides run on glibc's malloc.
TCMALLOC = os.environ.get("KERAS_SIGLIP_TEST_TCMALLOC") != "0" and ctypes.util.find_library("tcmalloc_minimal")


def guide_arguments(guide):
    """`--quick` for a guide that has it, unless this pass runs its full configuration."""
    if '"--quick"' not in guide.read_text() or FULL_IN.get(guide.name) == keras.backend.backend():
        return []
    return ["--quick"]


def run_guide(guide, tmp_path):
    assert 'os.environ["KERAS_BACKEND"] =' not in guide.read_text(), f"{guide.name} overrides the pass's backend"
    # One thread per guide, as each test worker has one core: torch's spinning threads fighting the
    # other worker took the recipe guide from ~1 to 10 minutes (233 s vs 609 s side by side).
    # Guides train for minutes: most run with XLA's optimisations, which conftest turns off for tests
    # (on JAX and TensorFlow).
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if guide.name not in UNOPTIMISED_ON_JAX or keras.backend.backend() != "jax":
        xla_flags = " ".join(flag for flag in xla_flags.split() if flag not in TEST_XLA_FLAGS)
    allocator = {"LD_PRELOAD": " ".join(filter(None, [os.environ.get("LD_PRELOAD"), TCMALLOC])),
                 "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)} if TCMALLOC else {}
    result = subprocess.run(
        [sys.executable, str(guide), *guide_arguments(guide)], capture_output=True, text=True, timeout=600,
        # TMPDIR: the plots and files a guide keeps for its reader go where pytest cleans up.
        env={"OMP_NUM_THREADS": "1", **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": xla_flags,
             "TMPDIR": str(tmp_path), **allocator},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a guide prints what it shows"


# One test class per guide: pytest-xdist's `--dist loadscope` keeps a class on one worker, so the
# guides (one to three minutes each) spread over the workers instead of queueing on one.
def guide_class(guide):
    @pytest.mark.slow
    def test_runs(self, tmp_path):
        run_guide(guide, tmp_path)

    name = "TestGuide_" + guide.stem
    return name, type(name, (), {"test_runs": test_runs,
                                 "__doc__": f"guides/{guide.name} runs and asserts what it prints."})


globals().update(guide_class(guide) for guide in GUIDES)
