"""`python -m benchmarks`: run every backend's worker, collect rows, write the report.

Each backend runs in its own subprocess (`python -m benchmarks.worker`), one
after the other (never two heavy processes at once). Rows are printed as they
complete; at the end the runner writes `RESULTS.md`, `results.json` and
`results.png` to the output folder (default `benchmarks/`, `benchmarks/quick/`
with `--quick`).
"""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import report
from benchmarks.worker import BACKENDS, LOG_PREFIX, ROW_PREFIX, backend_list

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTES = os.path.join(HERE, "NOTES.md")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny config + B/16 image at batch 2 + B/16 text at batch 8, "
                             "3-5 repeats, fit on the tiny config (< 3 min)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--cases", default=None, help="comma-separated rows to run (default: all)")
    parser.add_argument("--configs", default=None, help="override every row's configs, e.g. tiny")
    parser.add_argument("--peers", default="keras-hub,hf")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--notes", default=None,
                        help="Markdown appended to RESULTS.md (default: benchmarks/NOTES.md for "
                             "the full CPU run into benchmarks/)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each backend, wait up to SECONDS for other busy processes to finish")
    parser.add_argument("--require-gpu", action="store_true", help="fail unless every backend sees a GPU")
    return parser.parse_args(argv)


def _available(module):
    return importlib.util.find_spec(module) is not None


def _summary(row):
    """One progress line for a finished row."""
    where = f"[{row.get('backend')}] {row.get('case')} {row.get('config') or ''}"
    if "error" in row:
        return f"{where}: FAILED {row['error']}"
    if row.get("case") == "matmul_peak":
        return (f"{where}: {row['gflops_best']:.0f} GFLOP/s best, {row['gflops_median']:.0f} median "
                f"({row['mode']})")
    if "peers" in row:
        parts = [f"ours {row['ours']['value']:.2f} {row['unit']}"]
        for name, entry in row["peers"].items():
            ratio = entry["value"] / row["ours"]["value"]
            ok = "ok" if entry.get("agree") else "DISAGREE"
            parts.append(f"{entry.get('label', name)} {entry['value']:.2f} (x{ratio:.2f}, "
                         f"diff {entry.get('max_abs_diff', float('nan')):.1e} {ok})")
        return f"{where} b={row.get('batch')}: " + " | ".join(parts)
    return f"{where}: {json.dumps(row)[:200]}"


def run_worker(backend, args, log_dir):
    cmd = [sys.executable, "-m", "benchmarks.worker", "--backend", backend, "--peers", args.peers]
    for flag in ("quick", "require_gpu"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    for option in ("cases", "configs", "repeats", "warmup"):
        value = getattr(args, option)
        if value is not None:
            cmd += ["--" + option, str(value)]
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log_path = os.path.join(log_dir, f"{backend}.log")
    print(f"=== {backend}: {shlex.join(cmd[1:])} (stderr -> {log_path})", flush=True)
    rows = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        monitor = _Monitor(exclude={proc.pid})
        monitor.start()
        for line in proc.stdout:
            if line.startswith(ROW_PREFIX):
                row = json.loads(line[len(ROW_PREFIX):])
                rows.append(row)
                print("  " + _summary(row), flush=True)
            elif line.startswith(LOG_PREFIX):
                print("  " + line[len(LOG_PREFIX):].rstrip(), flush=True)
        code = proc.wait()
        monitor.stop()
    wall = time.perf_counter() - start
    for busy in monitor.busy.values():
        print(f"WARNING: pid {busy['pid']} used {busy['cpu_percent']}% CPU during the {backend} worker "
              f"({busy['cmd'][:80]}); its timings are unreliable", flush=True)
    if code:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        print(f"=== {backend} worker exited with {code}; log tail:\n{tail}", flush=True)
        if not rows or code not in (0, 1):
            rows.append({"case": "worker", "config": None, "backend": backend,
                         "error": f"worker exited with {code}; see {log_path}"})
    print(f"=== {backend} done in {wall:.0f} s", flush=True)
    return rows, wall, list(monitor.busy.values())


class _Monitor(threading.Thread):
    """Samples other processes' CPU use every ~15 s while a worker runs."""

    def __init__(self, exclude, period=15.0):
        super().__init__(daemon=True)
        self.exclude = set(exclude)
        self.period = period
        self.busy = {}
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.period):
            for proc in report.busy_processes(1.0, exclude=self.exclude):
                previous = self.busy.get(proc["pid"])
                if previous is None or proc["cpu_percent"] > previous["cpu_percent"]:
                    self.busy[proc["pid"]] = proc

    def stop(self):
        self._stop_event.set()
        self.join()


def _wait_idle(seconds):
    """Poll until no other process is busy, for at most `seconds`; returns the last busy list."""
    deadline = time.monotonic() + seconds
    busy = report.busy_processes()
    while busy and time.monotonic() < deadline:
        print(f"waiting for the machine to be idle: {', '.join(str(p['pid']) for p in busy)} busy", flush=True)
        time.sleep(30)
        busy = report.busy_processes()
    return busy


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    backends = backend_list(args.backends)
    peers = [p for p in args.peers.split(",") if p]
    if "torch" in backends and not _available("torch"):
        print("torch is not installed: skipping the torch backend (pip install -e '.[test]')")
        backends.remove("torch")
    if "hf" in peers and not (_available("torch") and _available("transformers")):
        print("torch/transformers are not installed: skipping the HF peer (pip install -e '.[test]')")
        peers.remove("hf")
    args.peers = ",".join(peers)
    default_dir = os.path.join(HERE, "quick") if args.quick else HERE
    out_dir = args.out_dir or default_dir
    notes_path = args.notes
    if notes_path is None and os.path.abspath(out_dir) == HERE and os.path.exists(NOTES):
        notes_path = NOTES
    notes = open(notes_path).read() if notes_path else None

    machine = report.describe_machine()
    print(f"Machine: {machine['cpu_model']}, {machine['logical_cpus']} CPUs, {machine['memory_gib']} GiB; "
          f"GPUs: {machine['gpus'] or 'none'}", flush=True)
    rows, worker_wall, busy_before, busy_during, waited = [], {}, {}, {}, 0.0
    with tempfile.TemporaryDirectory(prefix="keras_siglip_bench_") as log_dir:
        for backend in backends:
            wait_start = time.perf_counter()
            busy_before[backend] = _wait_idle(args.wait_idle)
            waited += time.perf_counter() - wait_start
            for proc in busy_before[backend]:
                print(f"WARNING: machine not idle: pid {proc['pid']} uses {proc['cpu_percent']}% CPU "
                      f"({proc['cmd'][:80]}); timings will be unreliable", flush=True)
            backend_rows, worker_wall[backend], busy_during[backend] = run_worker(backend, args, log_dir)
            rows += backend_rows
    wall = time.perf_counter() - start - waited  # waiting for an idle machine is not run time
    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) <= 1 else
                                        " " + shlex.join(sys.argv[1:] if argv is None else argv))
    result = report.build_result(rows, machine, command, args.quick, wall, worker_wall, busy_before,
                                 busy_during)
    paths = report.write_all(result, out_dir, notes)
    print(f"Total wall time {wall:.0f} s" + (f" (+ {waited:.0f} s waiting for idle)" if waited > 5 else "")
          + ". Wrote " + ", ".join(os.path.relpath(p) for p in paths))
    g = result["goals"]
    print("Goals: keras-hub rows faster-or-equal {ours_faster_or_equal}/{rows}".format(
        **g["not_slower_than_keras_hub"]) + "; HF image rows faster {ours_faster}/{rows}".format(
        **g["faster_than_hf_on_image_encoder"]))
    failed = [r for r in rows if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
