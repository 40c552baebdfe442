"""Guide: M4 data balancing: reweight a data set so that a sensitive attribute is
evenly represented and uncorrelated with the labels.

M4 (Multi-Modal Moment Matching, "CLIP the Bias", Alabdulmohsin et al., ICLR 2024)
gives each example a weight in [0, 1], a keep probability, so that under the weights
  - first order (representation bias): each sensitive group's share is within a
    tolerance of its target (here: uniform);
  - second order (association bias): the covariance between each group and each
    label is within a bound.
SigLIP 2 trains on data balanced this way.

Here the procedural shapes data stands in for web data: the background colour plays
the sensitive attribute and the shape colour the label. We plant two biases by
dropping examples (gray backgrounds are over-represented; red shapes sit mostly on
gray) on top of one the data already has: some colours never appear on some
backgrounds (white shapes only on gray, dark green or teal), so e.g. "white" is
negatively associated with "pink". `ks.data.balance_weights` removes all three;
where a colour can never meet a background, the only way to decorrelate them is to
weight that colour down, and the report shows it. `balanced_subsample` then draws a
subsample with probabilities proportional to the weights, and `weighted_dataset`
turns the weights into a tf.data pipeline for training.

    python guides/m4_balancing.py [--examples 20000] [--out m4_balancing.png]
"""

import argparse
import os
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.data import (balance_weights, balanced_subsample, shapes,  # noqa: E402
                               statistics, weighted_dataset)


def shapes_annotations(num_examples, seed):
    """Background and shape-colour codes of ShapesDataset(num_examples, seed)'s
    examples, from the same random draws, without rendering the images."""
    attrs = [shapes.sample_attributes(np.random.default_rng([seed, i])) for i in range(num_examples)]
    backgrounds = np.array([shapes.BACKGROUNDS.index(a.background) for a in attrs])
    colors = np.array([shapes.COLORS.index(a.color) for a in attrs])
    return backgrounds, colors


def plant_biases(backgrounds, colors, seed):
    """Keeps every gray-background example but only 35% of the others, and only 30%
    of the red shapes that are not on gray."""
    rng = np.random.default_rng(seed)
    gray, red = shapes.BACKGROUNDS.index("gray"), shapes.COLORS.index("red")
    keep = (backgrounds == gray) | (rng.uniform(size=len(backgrounds)) < 0.35)
    keep &= (colors != red) | (backgrounds == gray) | (rng.uniform(size=len(backgrounds)) < 0.3)
    return backgrounds[keep], colors[keep]


def show(name, stats):
    shares = " ".join(f"{b[:5]:>5} {p:5.1%}" for b, p in zip(shapes.BACKGROUNDS, stats["representation"]))
    cov = stats["association"]
    k, r = np.unravel_index(np.abs(cov).argmax(), cov.shape)
    print(f"{name:<10} backgrounds: {shares}")
    print(f"{'':<10} max |cov(background, colour)| = {abs(cov[k, r]):.4f} "
          f"({shapes.BACKGROUNDS[k]} x {shapes.COLORS[r]}), effective size {stats['effective_size']:,.0f}")


def plot(before, after, subsample, targets, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(shapes.BACKGROUNDS))
    for i, (name, stats) in enumerate((("before", before), ("M4 weights", after), ("subsample", subsample))):
        axes[0].bar(x + (i - 1) * 0.27, stats["representation"], 0.27, label=name)
    axes[0].plot([-0.5, len(x) - 0.5], [targets[0]] * 2, "k--", lw=1, label="target")
    axes[0].set(xticks=x, title="background share (first order)", ylabel="share")
    axes[0].set_xticklabels(shapes.BACKGROUNDS, rotation=30)
    axes[0].legend(fontsize=8)
    limit = np.abs(before["association"]).max()
    for ax, (name, stats) in zip(axes[1:], (("before", before), ("M4 weights", after))):
        image = ax.imshow(stats["association"], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set(title=f"cov(background, colour), {name}", xticks=range(len(shapes.COLORS)),
               yticks=range(len(shapes.BACKGROUNDS)))
        ax.set_xticklabels(shapes.COLORS, rotation=45)
        ax.set_yticklabels(shapes.BACKGROUNDS)
    fig.subplots_adjust(wspace=0.4)
    fig.colorbar(image, ax=axes[1:], shrink=0.8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20000, help="shapes examples before planting biases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.01, help="representation tolerance")
    parser.add_argument("--bound", type=float, default=0.01, help="association (covariance) bound")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "m4_balancing.png"))
    args = parser.parse_args(argv)

    backgrounds, colors = plant_biases(*shapes_annotations(args.examples, args.seed), args.seed)
    print(f"{len(backgrounds):,} examples; sensitive attribute: background ({len(shapes.BACKGROUNDS)} groups), "
          f"labels: shape colour ({len(shapes.COLORS)})")
    start = time.perf_counter()
    weights, report = balance_weights(backgrounds, colors, representation_tolerance=args.tolerance,
                                      association_bound=args.bound)
    print(f"balanced in {time.perf_counter() - start:.2f} s: {report.summary()}")
    show("before", report.before)
    show("M4", report.after)
    # The claim: the planted biases are there before (baseline: gap 0 and |cov| 0 for balanced data)
    # and M4's weights bring both within the requested tolerance and bound.
    assert report.representation_gap_before > 10 * args.tolerance, report.summary()
    assert report.association_gap_before > 2 * args.bound, report.summary()
    assert report.representation_gap_after <= args.tolerance * (1 + 1e-6), report.summary()
    assert report.association_gap_after <= args.bound * (1 + 1e-6), report.summary()
    rate_before, rate_after = report.before["label_rate"], report.after["label_rate"]
    print("colour rates before -> after: " + ", ".join(
        f"{c} {a:.1%}->{b:.1%}" for c, a, b in zip(shapes.COLORS, rate_before, rate_after)))

    # A fixed-size subsample, each example drawn with probability proportional to its weight.
    size = int(0.5 * weights.sum())
    picked = balanced_subsample(weights, size, seed=args.seed)
    sub = statistics(backgrounds[picked], colors[picked])
    show("subsample", sub)
    # A random draw of the weights keeps most of the correction (sampling noise aside).
    sub_gap = np.abs(sub["representation"] - report.representation_targets).max()
    assert sub_gap < report.representation_gap_before / 4, sub_gap
    assert np.abs(sub["association"]).max() < report.association_gap_before / 2, sub["association"]

    # Or keep example i with probability w_i inside a tf.data pipeline (the paper's
    # Bernoulli subsampling; mode="sample_weight" attaches w_i for model.fit instead).
    import tensorflow as tf
    head = 2000
    data = tf.data.Dataset.from_tensor_slices({"background": backgrounds[:head], "colour": colors[:head]})
    kept = sum(1 for _ in weighted_dataset(data, weights[:head], seed=args.seed))
    print(f"tf.data: kept {kept} of the first {head} examples (expected {weights[:head].sum():.0f})")
    # Bernoulli draws: the count lies within 4 standard deviations of its expectation.
    spread = np.sqrt(np.sum(weights[:head] * (1 - weights[:head])))
    assert abs(kept - weights[:head].sum()) <= 4 * spread, (kept, weights[:head].sum(), spread)

    plot(report.before, report.after, sub, report.representation_targets, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
