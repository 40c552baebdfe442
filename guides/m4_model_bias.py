"""Guide: model-level representation and association bias, and what M4 balancing of the
training data does to them.

"CLIP the Bias" (M4, Alabdulmohsin et al., ICLR 2024) measures the biases of a trained
two-tower model on labelled probe images (`ks.analysis.bias`):
  - representation bias (RB): on probes that carry no sensitive attribute, how far the
    share of zero-shot picks of each group's prompt is from uniform (SigLIP 2: the
    fraction of non-human images assigned "man" over "woman" minus 50%);
  - association bias (AB): on probes labelled with their group, the covariance between
    the group and the model's zero-shot concept prediction, max over (group, concept).

Here the shapes data stands in for people and occupations. The sensitive attribute is
the background (gray or pink), the concepts are the shape colours (red, yellow, blue,
green). We plant a spurious correlation and an over-representation: red shapes sit on
gray 90% of the time, yellow ones on pink 80% of the time, and gray backgrounds make up
67.5% of the data. Two tiny SigLIP models (ViT 32/1 on 24 px images, text 32/1, sigmoid
loss, trained from scratch) see the same number of steps and batches, one of the raw
data and one of the data drawn with `ks.data.balance_weights` weights (uniform
backgrounds, |cov(background, colour)| <= 0.01).
  - AB probes: shapes whose colour lies between red and yellow (mixing weight uniform in
    [0.3, 0.7], a colour no training image has) on gray or pink; concepts "red" /
    "yellow". A model that learned "red goes with gray" calls more of them red on gray.
  - RB probes: shapes in a training colour on a background mixed between gray and pink
    (weight uniform in [0.3, 0.7]), so neither group; prompts "gray" / "pink".
  - Quality: zero-shot colour accuracy (4 prompts) on held-out images with both
    backgrounds equally likely and no correlation.

Measured, `--quick` (2000 examples, 300 steps of 32, one seed, lr 3e-3; one thread,
the machine otherwise idle):
    backend     AB raw -> M4   RB raw -> M4   accuracy raw -> M4   run time
    jax         0.198 -> 0.058  0.118 -> 0.083  0.848 -> 0.925      40 s
    tensorflow  0.189 -> 0.072  0.233 -> 0.358  0.877 -> 0.950      41 s
    torch       0.225 -> 0.040  0.062 -> 0.323  0.812 -> 0.917      38 s
Full (6000 examples, 600 steps, 2 seeds; torch, 95 s): AB 0.108 -> 0.024 (P(red | gray)
0.75 -> 0.55, P(red | pink) 0.32 -> 0.45), RB 0.198 -> 0.265, accuracy 0.983 -> 0.992.
Asserted: AB raw > 0.05, AB M4 < AB raw - 0.04, accuracy M4 > accuracy raw - 0.05,
accuracy raw > 0.8 (chance 0.25). RB is printed but not asserted: with these probes
(a gray/pink mixture background) the planted over-representation of gray does not make
the raw model pick "gray" (gray share < 0.5 on every backend), and the balanced model's
RB is not lower, so this guide does not reproduce the paper's RB finding. Two other
probe designs, tried in `--quick` and not kept, say the same: a background half gray and
half pink (random side) gave gray shares raw 0.730 -> M4 0.698 (torch) and 0.700 ->
0.772 (JAX); a uniformly random RGB background (no group at all) 0.635 -> 0.645 (torch)
and 0.675 -> 0.752 (JAX). Whether a probe looks gray or pink to these tiny towers
decides the pick; the training prior M4 removes does not show at this scale.

    python guides/m4_model_bias.py [--quick] [--out m4_model_bias.png]
"""

import argparse
import os
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.analysis import association_bias, representation_bias  # noqa: E402
from keras_siglip.data import balance_weights, balanced_subsample, shapes  # noqa: E402
from keras_siglip.models import (SigLIPBackbone, SigLIPImageConverter, SigLIPPreprocessor,  # noqa: E402
                                 SigLIPTextEncoder, SigLIPTokenizer, SigLIPVisionEncoder)
from keras_siglip.presets.train_shapes import train_sentencepiece  # noqa: E402

IMAGE_SIZE, SEQUENCE_LENGTH = 24, 8
GROUPS = ("gray", "pink")  # the sensitive attribute: the background
COLORS = ("red", "yellow", "blue", "green")  # the concepts: the shape colour
# P(gray background | colour) in the raw data: red mostly on gray, yellow mostly on pink.
GRAY_GIVEN_COLOR = {"red": 0.9, "yellow": 0.2, "blue": 0.8, "green": 0.8}


def draw(rng, color_rgb, background_rgb):
    """A 24 px image of 1-3 random shapes in colour `color_rgb` on `background_rgb`
    (both RGB triples, jittered like the shapes data)."""
    attrs = shapes.sample_attributes(rng)
    # Render in black on gray to get the shape mask, then paint the requested colours.
    mask_image, _, attrs = shapes.render(
        shapes.ShapeAttributes("black", attrs.shape, attrs.size, attrs.position, attrs.count, "gray"),
        rng, IMAGE_SIZE, IMAGE_SIZE)
    mask = mask_image.mean(-1) < 70
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3))
    image[:] = np.asarray(background_rgb) + rng.integers(-10, 11, 3)
    image[mask] = np.asarray(color_rgb) + rng.integers(-15, 16, 3)
    image += rng.integers(-4, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), attrs.shape


def caption(rng, color, shape, background):
    template = ("{c} {s} on {b}", "{c} {s} on {b}", "{c} {s}", "{c}", "{b}", "a {s} on {b}")[rng.integers(6)]
    return template.format(c=color, s=shape, b=background)


def training_data(num_examples, seed):
    """Raw (biased) training data: images, captions, background and colour codes."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(len(COLORS), size=num_examples)
    gray = rng.uniform(size=num_examples) < np.array([GRAY_GIVEN_COLOR[c] for c in COLORS])[colors]
    backgrounds = np.where(gray, 0, 1)
    images, captions = [], []
    for c, b in zip(colors, backgrounds):
        image, shape = draw(rng, shapes.COLOR_RGB[COLORS[c]], shapes.BACKGROUND_RGB[GROUPS[b]])
        images.append(image)
        captions.append(caption(rng, COLORS[c], shape, GROUPS[b]))
    return np.stack(images), np.array(captions), backgrounds, colors


def mix(a, b, t):
    return (1 - t) * np.asarray(a, np.float64) + t * np.asarray(b, np.float64)


def probes(num, seed):
    """AB probes (ambiguous red/yellow shapes on gray or pink, with their group), RB
    probes (training colours on a gray/pink mixture) and held-out quality images."""
    rng = np.random.default_rng(seed)
    rgb = shapes.COLOR_RGB
    bg = {g: shapes.BACKGROUND_RGB[g] for g in GROUPS}
    ab_groups = np.arange(num) % 2
    ab = [draw(rng, mix(rgb["red"], rgb["yellow"], rng.uniform(0.3, 0.7)), bg[GROUPS[g]])[0] for g in ab_groups]
    rb = [draw(rng, rgb[COLORS[rng.integers(len(COLORS))]], mix(bg["gray"], bg["pink"], rng.uniform(0.3, 0.7)))[0]
          for _ in range(num)]
    quality_colors = rng.integers(len(COLORS), size=num)
    quality = [draw(rng, rgb[COLORS[c]], bg[GROUPS[rng.integers(2)]])[0] for c in quality_colors]
    return np.stack(ab), ab_groups, np.stack(rb), np.stack(quality), quality_colors


def new_model(captions, seed):
    keras.utils.set_random_seed(seed)
    tokenizer = SigLIPTokenizer(proto=train_sentencepiece(list(captions), vocabulary_size=320), pad_token="<pad>")
    preprocessor = SigLIPPreprocessor(tokenizer, SigLIPImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
                                      sequence_length=SEQUENCE_LENGTH)
    vision = SigLIPVisionEncoder(patch_size=6, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=IMAGE_SIZE,
                                 pooling="gap")
    text = SigLIPTextEncoder(vocabulary_size=tokenizer.vocabulary_size(), width=32, depth=1, num_heads=2,
                             mlp_dim=64, sequence_length=SEQUENCE_LENGTH, num_classes=32)
    return SigLIPBackbone(vision, text, temperature_init=10.0, bias_init=-10.0), preprocessor


def train(images, captions, order, batch_size, seed, tokenizer_captions, learning_rate):
    """Trains a fresh model on the examples `order` (one pass, in that order)."""
    backbone, preprocessor = new_model(tokenizer_captions, seed)
    x = preprocessor({"images": images[order], "texts": captions[order]})
    x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}
    steps = len(order) // batch_size
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=steps, warmup_target=learning_rate,
                                                      warmup_steps=max(1, steps // 10))
    backbone.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4))
    backbone.fit(x, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return backbone, preprocessor


def embed(backbone, preprocessor, images=None, texts=None):
    if images is not None:
        x = preprocessor({"images": images})["images"]
        return keras.ops.convert_to_numpy(backbone.encode_images(x))
    return keras.ops.convert_to_numpy(backbone.encode_texts(preprocessor({"texts": list(texts)})["token_ids"]))


def evaluate(backbone, preprocessor, data):
    ab_images, ab_groups, rb_images, quality_images, quality_colors = data
    color_texts = embed(backbone, preprocessor, texts=COLORS)
    ab = association_bias(embed(backbone, preprocessor, ab_images), color_texts[:2], ab_groups)
    rb = representation_bias(embed(backbone, preprocessor, rb_images), embed(backbone, preprocessor, texts=GROUPS))
    picks = np.argmax(embed(backbone, preprocessor, quality_images) @ color_texts.T, -1)
    return {"AB": ab.value, "red|gray": ab.group_rates[0, 0], "red|pink": ab.group_rates[1, 0],
            "RB": rb.value, "gray share": rb.shares[0], "accuracy": float(np.mean(picks == quality_colors))}


def plot(results, path):
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, metric in zip(axes, ("AB", "RB", "accuracy")):
        values = [np.mean([r[metric] for r in results[n]]) for n in names]
        ax.bar(names, values, color=["tab:red", "tab:green"])
        ax.set(title=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples and steps, one seed")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "m4_model_bias.png"))
    args = parser.parse_args(argv)
    num_examples = args.examples or (2000 if args.quick else 6000)
    steps = args.steps or (300 if args.quick else 600)
    seeds = args.seeds or (1 if args.quick else 2)
    start = time.perf_counter()

    images, captions, backgrounds, colors = training_data(num_examples, seed=0)
    weights, report = balance_weights(backgrounds, colors, representation_tolerance=0.01, association_bound=0.01)
    print(f"{num_examples} training examples; M4: {report.summary()}")
    kept = balanced_subsample(weights, int(weights.sum()), seed=0)
    data = probes(args.probes, seed=1)
    results = {"raw": [], "M4": []}
    for seed in range(seeds):
        rng = np.random.default_rng(seed + 10)
        orders = {"raw": rng.integers(num_examples, size=steps * args.batch_size),
                  "M4": rng.choice(kept, size=steps * args.batch_size)}
        for name, order in orders.items():
            backbone, preprocessor = train(images, captions, order, args.batch_size, seed, captions, args.learning_rate)
            results[name].append(evaluate(backbone, preprocessor, data))
            print(f"seed {seed} {name:>4}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name][-1].items()),
                  flush=True)
    mean = {n: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for n, rs in results.items()}
    print(f"\n{'data':<5} {'AB':>6} {'P(red|gray)':>12} {'P(red|pink)':>12} {'RB':>6} {'gray share':>11} "
          f"{'accuracy':>9}")
    for n, m in mean.items():
        print(f"{n:<5} {m['AB']:6.3f} {m['red|gray']:12.3f} {m['red|pink']:12.3f} {m['RB']:6.3f} "
              f"{m['gray share']:11.3f} {m['accuracy']:9.3f}")
    plot(results, args.out)
    print(f"wrote {args.out}; {time.perf_counter() - start:.0f} s")
    # Baseline: an unbiased model has AB = RB = 0 (up to probe sampling noise, ~0.02 for AB
    # with 400 probes) and the raw one learned the planted correlation.
    raw, m4 = mean["raw"], mean["M4"]
    assert raw["AB"] > 0.05, raw
    assert m4["AB"] < raw["AB"] - 0.04, (raw, m4)
    assert m4["accuracy"] > raw["accuracy"] - 0.05, (raw, m4)
    assert raw["accuracy"] > 0.8, raw  # both models learned colours (chance: 0.25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
