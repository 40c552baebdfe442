"""Side-by-side benchmarks of keras_siglip against keras-hub and HF transformers.

    python -m benchmarks           # full run -> benchmarks/RESULTS.md, results.json, results.png
    python -m benchmarks --quick   # < 3 minutes -> benchmarks/quick/
    benchmarks/gpu.sh              # JAX + torch rows on a GPU machine -> benchmarks/gpu/

Layout:
    runner.py   the parent: one worker subprocess per backend, then the report
    worker.py   `python -m benchmarks.worker --backend B`: runs the rows, prints JSON rows
    cases.py    the rows (`@case`); add a row here
    models.py   configs, building ours / keras-hub / HF with one set of weights, FLOP counts
    backends.py how each framework runs a forward (jit / XLA / eager no_grad), matmul peak
    timing.py   warm-up + median timing, output agreement
    report.py   ratios, RESULTS.md, results.json, results.png
    NOTES.md    hand-written analysis of the rows where we are slower, appended to RESULTS.md
"""
