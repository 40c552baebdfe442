"""One backend's benchmark rows, in one process (KERAS_BACKEND is fixed per process).

    python -m benchmarks.worker --backend jax [--quick] [--cases a,b] [--configs tiny]
                                [--peers keras-hub,hf] [--repeats N] [--warmup N]
                                [--out rows.json] [--require-gpu]

Prints one line per row, `@@ROW <json>`, as soon as the row is measured, and
progress lines `@@LOG <text>`; `--out` also writes all rows as a JSON list.
"""

import argparse
import json
import os
import sys
import time
import traceback

ROW_PREFIX = "@@ROW "
LOG_PREFIX = "@@LOG "

BACKENDS = ("jax", "tensorflow", "torch")


def backend_list(text):
    """"jax,torch" -> ["jax", "torch"]; exits naming any unknown backend."""
    backends = [b for b in text.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"Unknown backends {unknown}; choose from {BACKENDS}.")
    return backends


def child_peak_rss(command, env):
    """Run `command` in a fresh process; return (seconds, peak RSS in bytes) of
    that process alone (measured by a parent that does nothing else)."""
    import subprocess

    script = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True)\n"
        "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *command], env=env, check=True,
                         capture_output=True, text=True)
    seconds, kib = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(kib) * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated config names; overrides each case's default configs")
    parser.add_argument("--peers", default="keras-hub,hf")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail unless the backend sees a GPU")
    return parser.parse_args(argv)


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if keras.config.backend() != args.backend:
        raise SystemExit(f"KERAS_BACKEND={args.backend} but keras was already imported "
                         f"with {keras.config.backend()}")
    from benchmarks import backends, cases

    rows = []

    def emit(row):
        rows.append(row)
        print(ROW_PREFIX + json.dumps(row, default=_json_default), flush=True)

    def log(text):
        print(f"{LOG_PREFIX}[{args.backend}] {text}", flush=True)

    device = backends.device_kind()
    if args.require_gpu and device != "gpu":
        raise SystemExit(f"--require-gpu: the {args.backend} backend sees no GPU "
                         "(install a CUDA build of it, check nvidia-smi).")
    peers = tuple(p for p in args.peers.split(",") if p)
    ctx = cases.Context(args.backend, quick=args.quick, peers=peers, repeats=args.repeats,
                        warmup=args.warmup, emit=emit, log=log)
    names = args.cases.split(",") if args.cases else list(cases.CASES)
    unknown = [n for n in names if n not in cases.CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(cases.CASES)}")
    failures = 0
    for name in names:
        spec = cases.CASES[name]
        configs = spec.quick_configs if args.quick else spec.configs
        if args.configs and configs != (None,):
            configs = tuple(args.configs.split(","))
        for config in configs:
            start = time.perf_counter()
            log(f"{name} {config or ''} ...")
            try:
                spec.fn(ctx, config)
            except Exception as error:  # report the row as failed, carry on
                failures += 1
                traceback.print_exc()
                emit({"case": name, "config": config, "backend": args.backend, "device": device,
                      "error": f"{type(error).__name__}: {error}"})
            log(f"{name} {config or ''} done in {time.perf_counter() - start:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1, default=_json_default)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
