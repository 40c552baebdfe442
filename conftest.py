"""Shared by tests/ and integration_tests/: runs before any framework is imported."""

import os
import sys
import tempfile

import pytest

# Shared test helpers assert too: pytest rewrites them as it does test modules.
pytest.register_assert_rewrite("tests.helpers")

# Every guide, CLI and benchmark test runs a fresh Python process that imports Keras and
# its frameworks. With PYTHONDONTWRITEBYTECODE set (some images set it globally), no
# process keeps the bytecode it compiled, so each one compiles Keras, TensorFlow, JAX and
# torch from source again: `import keras` took 10-13 s instead of 4.4 s on torch, and the
# CLI tests 52 s instead of 34 s. The bytecode cache is only a cache (same code, same
# results), so the test run keeps it, for its own imports and every subprocess's.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

# Under pytest-xdist every worker gets an equal share of the cores. Thread pools
# sized for the whole machine (torch's OpenMP, TensorFlow's, XLA's Eigen pool) in
# each of several workers fight over the same cores and slow every test down; the
# guides run as subprocesses and inherit the same limits.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_name, _threads)
    if _threads == "1":  # XLA:CPU's Eigen pool (flags only: a bare word ends XLA's flag parsing)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

# Tests build many tiny models and run each a few times, so on JAX compiling dominates and
# LLVM's optimisation passes are most of compiling: without them the training and SigLIP 2
# tests take 192 s instead of 294 s. The guides train for minutes and run faster optimised
# (locca: 101 s vs 144 s), so test_guides drops this flag for them. TensorFlow's XLA reads
# the same flag: its tests trace more than they compile, but the generation loops are XLA
# programs; measured side by side on one thread each, the CapPa captioner tests took 84 s
# instead of 105 s, PaliGemma's 95 s instead of 118 s, resume + LocCa + SigLIP 2 355 s
# instead of 385 s.
# XLA:CPU's newer MLIR fusion emitters take most of what compiling is left: with the legacy
# (LLVM IR) emitters a tiny SigLIP 2 train step compiles in 2.6 s instead of 6.5 s, the JAX
# pass's tests (without the guides) took 1767 s of test time instead of 2560 s, TensorFlow's
# PaliGemma + CapPa + LocCa tests 189 s instead of 230 s; every test passes at its tolerance.
if os.environ.get("KERAS_BACKEND") in ("jax", "tensorflow"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_cpu_use_fusion_emitters=false").strip()

# JAX keeps compiled programs on disk and reuses them across tests, workers and
# subprocesses (guides): many tests build fresh models of the same shapes and so
# compile the same programs again (the exact-resume tests compile one train step
# three times). The executables are the same, so results are too; compiling
# dominates the JAX pass on CPU (the resume test: 3m02 -> 1m18 of CPU).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "keras_siglip_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Property-based (fuzz) tests: bounded and reproducible in CI; `HYPOTHESIS_PROFILE=dev`
# explores more (random seeds, more examples).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test extra
    pass


def pytest_collection_modifyitems(items):
    """Longest work first. pytest-xdist hands each worker the next module (or
    test class: each guide is one) as it frees up, in this order; started
    longest first, the pass ends with short modules on both workers instead of
    one worker still busy with a long one while the other idles. The seconds
    come from a CI run (tests/durations.py); a module missing from it is
    estimated from its number of tests. pytest.ini turns off xdist's own
    reordering, which sorts by test count alone (it put the sixteen single-test
    guides, one to three minutes each, last)."""
    from tests import durations

    by_id = {item.nodeid: item for item in items}
    order = durations.longest_first(list(by_id), durations.load(os.environ.get("KERAS_BACKEND", "jax")))
    items[:] = [by_id[nodeid] for nodeid in order]
