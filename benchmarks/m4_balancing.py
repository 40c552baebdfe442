"""Time of M4 data balancing (`keras_siglip.data.balance_weights`) at 10^6 examples.

    python -m benchmarks.m4_balancing                    # N = 10^6, K = 10 groups, M = 10 labels
    python -m benchmarks.m4_balancing --examples 100000

Synthetic data with planted biases: K one-hot sensitive groups with Zipf shares
(1/(k+1), the largest about 10x the smallest) and M binary labels whose rate rises with
the group index (covariances up to about 0.05). Balancing asks for uniform
representation (1/K +- 0.01) and |Cov_w(s_k, y_r)| <= 0.01, max_weight 1 (keep
probabilities). Three paths are timed: binary data without utility is solved on its
distinct (s, y) rows (exact; at most K * 2^M of them); with a per-example utility (a
quality score) every example is an unknown but the bias terms are still computed per
distinct row (O(N) work per dual step); soft attributes (values in (0, 1)) make every
example its own row, the dense worst case: two (N, K) x (K, M) products per dual step.
numpy on the CPU; writes `m4_balancing.json`.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def planted(n, groups, labels, seed=0):
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, groups + 1)
    codes = rng.choice(groups, size=n, p=share / share.sum())
    rate = 0.2 + 0.3 * codes[:, None] / max(1, groups - 1) * np.linspace(1, -1, labels)[None] ** 2
    return codes, (rng.uniform(size=(n, labels)) < rate).astype(np.float32), rng.uniform(0.5, 1.5, n)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.m4_balancing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(HERE, "m4_balancing.json"))
    args = parser.parse_args(argv)
    from scipy import optimize  # noqa: F401  (import time is not balancing time)

    from keras_siglip.data import m4

    codes, labels, utility = planted(args.examples, args.groups, args.labels)
    print(f"N = {args.examples:,}, K = {args.groups} groups, M = {args.labels} labels", flush=True)
    rows = []
    soft = np.eye(args.groups)[codes] * 0.98 + 0.02 / args.groups  # still sums to 1 per row
    paths = (("distinct rows", codes, {}), ("utility", codes, {"utility": utility}),
             ("soft (dense)", soft, {"utility": utility}))
    for path, attributes, extra in paths:
        start = time.perf_counter()
        weights, report = m4.balance_weights(attributes, labels, representation_tolerance=0.01,
                                             association_bound=0.01, **extra)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        m4.balanced_subsample(weights, args.examples // 10, seed=0)
        subsample_seconds = time.perf_counter() - start
        rows.append({"path": path, "seconds": seconds, "subsample_seconds": subsample_seconds,
                     "solver_rows": report.rows, "rounds": report.rounds, "iterations": report.iterations,
                     "representation_gap": [report.representation_gap_before, report.representation_gap_after],
                     "association_gap": [report.association_gap_before, report.association_gap_after],
                     "mean_weight": report.mean_weight, "effective_size": report.after["effective_size"]})
        print(f"  {path:<16} {seconds:7.2f} s  ({report.rows:,} solver rows, {report.rounds} rounds, "
              f"{report.iterations} L-BFGS-B iterations); subsample of N/10: {subsample_seconds:.2f} s", flush=True)
        print(f"  {'':<16} {report.summary()}", flush=True)
    result = {"examples": args.examples, "groups": args.groups, "labels": args.labels,
              "representation_tolerance": 0.01, "association_bound": 0.01, "max_weight": 1.0,
              "numpy": np.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
