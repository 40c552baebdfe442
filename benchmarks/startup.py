"""Cold start of the `keras-siglip` command: wall time, peak memory and the
frameworks each command imports, per backend.

    python -m benchmarks.startup                     # all three backends
    python -m benchmarks.startup --backends jax --repeats 1

Each command runs in a fresh process, as a user runs it, on the shipped default
model (`siglip2_shapes_tiny`) and one small PNG: `--help`, `presets`,
`zero-shot` (one image, three labels) and `embed` (one image). The time is the
median of `--repeats` runs (the first run also pays the disk cache); the
memory is that process's peak resident set. Writes `benchmarks/startup.json`
and prints a table.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from benchmarks import worker
from benchmarks.worker import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))
FRAMEWORKS = ("tensorflow", "jax", "torch", "keras")

# Runs the command's `main` as the console script does, and records which
# frameworks the process imported by the time it exits.
_WRAPPER = """
import atexit, json, sys
def _record():
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(m for m in {frameworks!r} if m in sys.modules), f)
atexit.register(_record)
from keras_siglip.cli import main
sys.exit(main(sys.argv[2:]))
"""


def write_image(path):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 16:48] = (220, 40, 40)  # a red square
    Image.fromarray(pixels).save(path)


def commands(folder):
    image = os.path.join(folder, "square.png")
    write_image(image)
    return {
        "--help": ["--help"],
        "presets": ["presets"],
        "zero-shot": ["zero-shot", image, "--labels", "circle", "square", "triangle"],
        "embed": ["embed", image, "--out", os.path.join(folder, "embedding.npy")],
    }


def measure(backend, name, argv, folder, repeats):
    env = {**os.environ, "KERAS_BACKEND": backend}
    imported_path = os.path.join(folder, "imported.json")
    wrapper = _WRAPPER.format(frameworks=FRAMEWORKS)
    runs = [worker.child_peak_rss([sys.executable, "-c", wrapper, imported_path, *argv], env)
            for _ in range(repeats)]
    with open(imported_path) as f:
        imported = json.load(f)
    row = {
        "backend": backend,
        "command": name,
        "seconds": statistics.median(seconds for seconds, _ in runs),
        "first_run_seconds": runs[0][0],
        "peak_rss_bytes": max(peak for _, peak in runs),
        "imports": imported,
    }
    print(f"{backend:<10} {name:<10} {row['seconds']:6.2f} s  {row['peak_rss_bytes'] / 2**20:6.0f} MiB  "
          f"imports {', '.join(imported) or 'no framework'}", flush=True)
    return row


def table(rows):
    lines = ["| backend | command | seconds (median) | first run | peak MiB | frameworks imported |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | `{r['command']}` | {r['seconds']:.2f} | {r['first_run_seconds']:.2f} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} | {', '.join(r['imports']) or 'none'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, default all three")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "startup.json"))
    args = parser.parse_args(argv)
    backends = worker.backend_list(args.backends)
    rows = []
    with tempfile.TemporaryDirectory(prefix="keras_siglip_startup_") as folder:
        for name, command in commands(folder).items():
            for backend in backends if name not in ("--help", "presets") else backends[:1]:
                rows.append(measure(backend, name, command, folder, args.repeats))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(table(rows))
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
