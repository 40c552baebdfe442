"""Timing and output-agreement helpers shared by every benchmark row."""

import statistics
import time

import numpy as np


def first_call(run):
    """Time the first call (trace + compile + run) and return `(seconds, outputs)`."""
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def measure(run, warmup, repeats):
    """Run `warmup` untimed calls, then `repeats` timed ones; summary in ms.

    Each implementation is measured in its own block (its warm-up, then its
    repeats) so that one framework's idle worker threads do not bleed into the
    first timed call of the next.
    """
    for _ in range(warmup):
        run()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def measure_interleaved(runs, warmup, repeats, rounds=3):
    """Time several implementations fairly: `{name: run}` -> `{name: summary}`.

    After each implementation's own warm-up, the timed calls are split into
    `rounds` blocks that alternate between implementations (A B C A B C ...),
    so slow drifts of the machine (other tenants, clocks) hit every
    implementation alike; the order rotates every round. When a call is short (< 100 ms) one untimed call
    follows each switch, absorbing the previous framework's idle threads.
    """
    durations = {}
    for name, run in runs.items():
        for _ in range(warmup):
            run()
        start = time.perf_counter()
        run()
        durations[name] = time.perf_counter() - start
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if i < repeats % rounds else 0) for i in range(rounds)]
    times = {name: [] for name in runs}
    names = list(runs)
    for index, count in enumerate(per_round):
        # Rotate the order each round so no implementation always follows the same one.
        for name in names[index % len(names):] + names[:index % len(names)]:
            run = runs[name]
            if durations[name] < 0.1:
                run()
            for _ in range(count):
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: summarize(t) for name, t in times.items()}


def summarize(times_ms):
    return {
        "median_ms": statistics.median(times_ms),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "repeats": len(times_ms),
        "times_ms": [round(t, 4) for t in times_ms],
    }


def agreement(reference, value, tolerance=1e-4):
    """Max |difference| and whether it is within `tolerance * max(1, max|reference|)`."""
    reference = np.asarray(reference, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if reference.shape != value.shape:
        return {"max_abs_diff": float("inf"), "ref_max_abs": None, "agree": False,
                "why": f"shape {value.shape} != {reference.shape}"}
    diff = float(np.max(np.abs(reference - value))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return {
        "max_abs_diff": diff,
        "ref_max_abs": scale,
        "tolerance": tolerance * max(1.0, scale),
        "agree": bool(np.isfinite(diff) and diff <= tolerance * max(1.0, scale)),
    }
