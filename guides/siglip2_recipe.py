"""Guide: train with the SigLIP 2 recipe, and compare it with the plain sigmoid loss.

SigLIP 2 keeps SigLIP's architecture and changes how it is trained: a LocCa
decoder (captions, referring expressions, grounded captions) beside the
sigmoid loss from the start, then for the last 20% of training an EMA teacher
with local-to-global self-distillation (SILC) and masked prediction (TIPS).
`ks.models.SigLIP2Pretrainer` is that recipe as one `fit`-able model;
`ks.data.recipe_dataset` makes its inputs in `tf.data`. The small models end
with active data curation (stage D, `ks.models.ActiveCurationTrainer`).

Here two identical tiny models (from the same initial weights) train on the
procedural shapes data from scratch: one with the plain sigmoid loss, one with
the recipe, at equal compute (the plain model gets twice the steps: a recipe
step measured 1.4-2.8x a plain one here). On held-out images we then compare:

- zero-shot accuracy over the 48 colour x shape classes (chance 1/48);
- image -> caption retrieval Recall@1 (chance 1/N);
- grounding with the frozen encoder on single-shape images (mean IoU; baseline:
  always the mean box): a linear box probe on the tokens, and with
  `SIGLIP2_RECIPE_LOCCA_PROBE=1` LocCa's protocol, a small decoder (one block)
  trained on the frozen tower's tokens for "a red circle" -> its box (150
  steps; about a minute more per backend, so not by default);
- dense features: a per-patch linear probe of "inside a shape" (mIoU of the
  two classes; baseline: all background).

The paper reports its gains mostly in localisation and dense prediction at
40 billion examples; a few CPU minutes are another regime, so read the
numbers as what happens here, not as the paper's claim checked. Measured
(zero-shot / R@1 / linear grounding mIoU / dense mIoU, plain vs recipe): JAX
0.168 / 0.085 / 0.263 / 0.648 vs 0.152 / 0.043 / 0.249 / 0.610; TensorFlow
0.203 / 0.083 / 0.246 / 0.620 vs 0.140 / 0.043 / 0.232 / 0.589; torch (one
thread) 0.163 / 0.075 / 0.256 / 0.670 vs 0.062 / 0.043 / 0.236 / 0.615. At
this scale the extra terms cost the tiny towers contrastive accuracy and do
not buy better dense features. LocCa's grounding probe (mean-box baseline
0.098; measured with the plain model's steps set by timing) gave the recipe's
encoder 0.101 / 0.129 / 0.122 and
the plain one 0.084 / 0.084 / 0.123 (JAX / TensorFlow / torch): near the
baseline for both after 150 probe steps (400 steps on the shipped shapes
model reach 0.156 against 0.103), a weak hint in the paper's direction on two
backends of three, not a result.

Stage D then shows active curation: with half of every super-batch
mis-captioned, the jointly selected half held 88% / 89% / 89% correctly
captioned pairs (JAX / TensorFlow / torch; random selection: 50%).

The plots of each loss term land in `siglip2_recipe_losses.png` (in a
temporary folder, or `SIGLIP2_RECIPE_OUT`).

To train on TPUs, set the distribution before building the models, e.g.
`keras.distribution.set_distribution(keras.distribution.DataParallel())`: the
sigmoid term becomes the ring loss across devices and everything else is
sharded by the batch (FSDP: `ModelParallel` with
`SigLIPBackbone.get_layout_map(mesh)`); back up with
`ks.callbacks.ShardedBackupAndRestore` so no host gathers the sharded state.
Runs offline on every backend:

    KERAS_BACKEND=jax python guides/siglip2_recipe.py
"""

import os
import tempfile
import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.data import recipe_dataset, shapes, shapes_recipe_examples
from keras_siglip.layers.boxes import box_iou
from keras_siglip.models.cappa import locca_examples

IMAGE, PATCH, TEXT_LENGTH, DECODER_LENGTH = 32, 8, 16, 16
BATCH, RECIPE_STEPS, LOCAL_VIEWS = 32, 300, 4
PLAIN_STEPS = 2 * RECIPE_STEPS  # equal compute: see below
LOCCA_PROBE = os.environ.get("SIGLIP2_RECIPE_LOCCA_PROBE") == "1"  # about a minute more per backend
keras.utils.set_random_seed(0)

# === Data ===
train = shapes.ShapesDataset(RECIPE_STEPS * BATCH // 3, seed=80, image_size=IMAGE)
test = shapes.ShapesDataset(400, seed=81, image_size=IMAGE)  # never trained on
train_arrays, test_arrays = train.arrays(), test.arrays()
prompts = [shapes.with_article(name) for name in shapes.class_names()]
tokenizer = ks.models.SigLIPTokenizer.from_texts(
    list(train_arrays["captions"]) + prompts + ["cap aref gcap"], vocabulary_size=200)
preprocessor = ks.models.SigLIPPreprocessor(
    tokenizer, ks.models.SigLIPImageConverter(image_size=(IMAGE, IMAGE)), sequence_length=TEXT_LENGTH)
decoder_preprocessor = ks.models.LocCaPreprocessor(tokenizer, None, sequence_length=DECODER_LENGTH,
                                                   num_loc_tokens=32)


def backbone():
    """The tiny two-tower model; both runs start from `INITIAL` weights."""
    return ks.models.SigLIPBackbone(
        ks.models.SigLIPVisionEncoder(patch_size=PATCH, width=64, depth=2, num_heads=2, mlp_dim=128,
                                      image_size=IMAGE),
        ks.models.SigLIPTextEncoder(vocabulary_size=tokenizer.vocabulary_size(), width=64, depth=2,
                                    num_heads=2, mlp_dim=128, sequence_length=TEXT_LENGTH, num_classes=64),
    )


# Not `keras.utils.set_random_seed` between models: it clears TensorFlow's kernel
# cache, and with it the tokenizer's SentencePiece resource the data pipeline uses.
INITIAL = backbone().get_weights()


def initial_backbone():
    model = backbone()
    model.set_weights(INITIAL)
    return model


class StepLog(keras.callbacks.Callback):
    """Each step's own loss terms (recovered from Keras' running epoch means)
    and wall time (the first step after each compile is not timed)."""

    def __init__(self):
        super().__init__()
        self.logs, self.seconds, self._start, self._stage, self._means = [], [], None, None, {}

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._start
        stage = getattr(self.model, "distilling", None)
        if stage == self._stage:
            self.seconds.append(elapsed)
        self._stage = stage
        means = {key: float(value) for key, value in logs.items()}
        previous = self._means if batch else {}
        self.logs.append({key: (batch + 1) * m - batch * previous.get(key, 0.0) for key, m in means.items()})
        self._means = means


# === The recipe ===
data = recipe_dataset(shapes_recipe_examples(train), preprocessor, decoder_preprocessor, BATCH,
                      num_local_views=LOCAL_VIEWS, local_size=(16, 16), seed=0).repeat()
recipe = ks.models.SigLIP2Pretrainer(
    initial_backbone(), total_steps=RECIPE_STEPS, num_loc_tokens=32, decoder_sequence_length=DECODER_LENGTH,
    size_factor=1.0, num_prototypes=256, head_hidden_dim=128, head_bottleneck_dim=64, seed=0,
)
recipe.compile(optimizer=ks.optimizers.SigLIPAdamW(3e-3, total_steps=RECIPE_STEPS))
recipe_log = StepLog()
recipe.fit(data, steps_per_epoch=RECIPE_STEPS // 3, epochs=3, verbose=0, callbacks=[recipe_log])

# === Plain sigmoid at equal compute ===
# The recipe's step measured 1.4-2.8x a plain one on a 2-core CPU (JAX 2.8x, TensorFlow 1.6-1.9x,
# torch 1.4-2.5x): the plain model gets PLAIN_STEPS = 2x the steps, fixed so the comparison does
# not move with the machine's load (timing it per run did: from 1.3x to 8x on a busy machine).
plain_data = data.map(lambda x: {"images": x["images"], "token_ids": x["token_ids"]})
plain = initial_backbone()
plain.compile(optimizer=ks.optimizers.SigLIPAdamW(3e-3, total_steps=PLAIN_STEPS))
plain_log = StepLog()
plain.fit(plain_data, steps_per_epoch=PLAIN_STEPS, epochs=1, verbose=0, callbacks=[plain_log])
plain_ms, recipe_ms = (1000 * float(np.median(log.seconds)) for log in (plain_log, recipe_log))
print(f"recipe: {RECIPE_STEPS} steps (stage B from step {recipe.distillation_step}); plain sigmoid: "
      f"{PLAIN_STEPS} steps (measured here: {recipe_ms:.0f} vs {plain_ms:.0f} ms/step, "
      f"{recipe_ms / plain_ms:.1f}x)")


# === Evaluation on held-out images ===
def as_model_images(images):
    return keras.ops.convert_to_numpy(preprocessor.image_converter(images))


test_images, train_images = as_model_images(test_arrays["images"]), as_model_images(train_arrays["images"][:1200])
test_tokens = keras.ops.convert_to_numpy(preprocessor({"texts": test_arrays["captions"]})["token_ids"])
prompt_tokens = keras.ops.convert_to_numpy(preprocessor({"texts": prompts})["token_ids"])


single_train, single_test = train_arrays["num_boxes"][:1200] == 1, test_arrays["num_boxes"] == 1
region_train = [prompts[label] for label in train_arrays["labels"][:1200][single_train]]
region_test = [prompts[label] for label in test_arrays["labels"][single_test]]
boxes_train, boxes_test = train_arrays["boxes"][:1200][single_train, 0], test_arrays["boxes"][single_test, 0]
aref_train = {key: value[1::3] for key, value in locca_examples(  # rows 1::3 are the ARef examples
    train_arrays["images"][:1200][single_train], region_train, region_train, boxes_train).items()}
probe_preprocessor = ks.models.LocCaPreprocessor(tokenizer, ks.models.SigLIPImageConverter(image_size=(IMAGE, IMAGE)),
                                                 sequence_length=DECODER_LENGTH, num_loc_tokens=32)


def token_features(model, images):
    vit = model.vision_encoder.vit
    return np.concatenate([keras.ops.convert_to_numpy(vit(images[i:i + 200], return_tokens=True))
                           for i in range(0, len(images), 200)])


def ridge(features, targets, alpha=1.0):
    features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    gram = features.T @ features + alpha * np.eye(features.shape[1])
    return np.linalg.solve(gram, features.T @ targets)


def apply(weights, features):
    return np.concatenate([features, np.ones((len(features), 1))], axis=1) @ weights


def locca_probe(model, steps=150, batch=32):
    """Frozen-encoder grounding, LocCa's protocol: a one-block LocCa decoder
    trained on the frozen image tower's tokens for referring expressions
    ("a red circle" -> its box) of single-shape images; held-out mean IoU of
    its (constrained) greedy boxes."""
    vit = model.vision_encoder.vit
    probe_backbone = ks.models.CapPaBackbone(
        vocabulary_size=probe_preprocessor.vocabulary_size, patch_size=PATCH, width=vit.width, depth=vit.depth,
        num_heads=vit.num_heads, mlp_dim=vit.mlp_dim, image_size=IMAGE, max_length=DECODER_LENGTH,
        decoder_width=64, decoder_depth=1, decoder_num_heads=2, decoder_mlp_dim=128)
    for part in ("embedding", "position_embedding", "encoder"):  # the trained tower, without its MAP head
        getattr(probe_backbone.vit, part).set_weights(getattr(vit, part).get_weights())
    probe_backbone.vit.trainable = False
    probe = ks.models.LocCaCaptioner(probe_backbone, probe_preprocessor, seed=0)
    probe.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=1.0))
    epochs = max(1, steps * batch // len(aref_train["tasks"]))
    probe.fit(aref_train, batch_size=batch, epochs=epochs, verbose=0)
    return probe.evaluate_grounding(test_arrays["images"][single_test], region_test, boxes_test)["mean_iou"]


def patch_labels(arrays, count):
    """(count, N) 1 where the patch centre lies inside a shape's box."""
    grid = IMAGE // PATCH
    centres = (np.arange(grid) + 0.5) / grid
    y, x = np.meshgrid(centres, centres, indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    labels = np.zeros((count, grid * grid), bool)
    for i in range(count):
        for box in arrays["boxes"][i, :arrays["num_boxes"][i]]:
            labels[i] |= (y >= box[0]) & (y <= box[2]) & (x >= box[1]) & (x <= box[3])
    return labels


def miou(predicted, truth):
    return np.mean([np.sum((predicted == c) & (truth == c)) / max(np.sum((predicted == c) | (truth == c)), 1)
                    for c in (0, 1)])


def evaluate(model):
    images = keras.ops.convert_to_numpy(model.encode_images(test_images))
    texts = keras.ops.convert_to_numpy(model.encode_texts(test_tokens))
    classes = keras.ops.convert_to_numpy(model.encode_texts(prompt_tokens))
    zero_shot = np.mean(np.argmax(images @ classes.T, axis=1) == test_arrays["labels"])
    recall = np.mean(np.argmax(images @ texts.T, axis=1) == np.arange(len(texts)))
    train_tokens, test_tokens_ = token_features(model, train_images), token_features(model, test_images)
    # Linear grounding probe: tokens of single-shape images -> their box.
    box_probe = ridge(train_tokens[single_train].reshape(single_train.sum(), -1), boxes_train)
    boxes = apply(box_probe, test_tokens_[single_test].reshape(single_test.sum(), -1))
    boxes = np.clip(np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])],
                                   axis=1), 0, 1)
    linear_iou = np.mean(np.diagonal(box_iou(boxes, boxes_test)))
    # Dense: per-patch "inside a shape".
    width = train_tokens.shape[-1]
    labels_train, labels_test = patch_labels(train_arrays, 1200), patch_labels(test_arrays, len(test_images))
    dense_probe = ridge(train_tokens.reshape(-1, width), 2 * labels_train.reshape(-1) - 1)
    dense = miou(apply(dense_probe, test_tokens_.reshape(-1, width)) > 0, labels_test.reshape(-1) > 0)
    grounding = {"grounding mIoU (LocCa probe)": locca_probe(model)} if LOCCA_PROBE else {}
    return {"zero-shot accuracy": zero_shot, "retrieval R@1": recall, **grounding,
            "grounding mIoU (linear probe)": linear_iou,
            "dense probe mIoU (patches)": dense}


mean_box = np.broadcast_to(boxes_train.mean(0), boxes_test.shape)
labels_test = patch_labels(test_arrays, len(test_images)).reshape(-1) > 0
mean_box_iou = np.mean(np.diagonal(box_iou(mean_box, boxes_test)))
baselines = {"zero-shot accuracy": 1 / 48, "retrieval R@1": 1 / len(test_images),
             **({"grounding mIoU (LocCa probe)": mean_box_iou} if LOCCA_PROBE else {}),
             "grounding mIoU (linear probe)": mean_box_iou,
             "dense probe mIoU (patches)": miou(np.zeros_like(labels_test), labels_test)}
results = {"plain sigmoid": evaluate(plain), "SigLIP 2 recipe": evaluate(recipe.backbone)}
print(f"\nheld-out ({len(test_images)} images)      chance/baseline   plain sigmoid   SigLIP 2 recipe")
for metric, baseline in baselines.items():
    print(f"  {metric:30s} {baseline:12.3f} {results['plain sigmoid'][metric]:15.3f} "
          f"{results['SigLIP 2 recipe'][metric]:17.3f}")

# === Loss terms over training ===
out = os.environ.get("SIGLIP2_RECIPE_OUT") or tempfile.mkdtemp(prefix="siglip2_recipe_")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

terms = ("sigmoid_loss", "decoder_loss", "distillation_loss", "masked_prediction_loss")
fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))


def smooth(values, width=10):
    return np.convolve(values, np.ones(width) / width, mode="valid")


for ax, term in zip(axes, terms):
    ax.plot(smooth([log[term] for log in recipe_log.logs]), label="recipe")
    if term == "sigmoid_loss":
        plain_curve = smooth([log["loss"] for log in plain_log.logs])
        ax.plot(np.linspace(0, RECIPE_STEPS, len(plain_curve)), plain_curve, label="plain (steps rescaled)",
                alpha=0.7)
        ax.legend()
    ax.axvline(recipe.distillation_step, color="grey", linestyle=":")
    ax.set_title(term.replace("_", " "))
    ax.set_xlabel("step (10-step mean)")
fig.tight_layout()
plot = os.path.join(out, "siglip2_recipe_losses.png")
fig.savefig(plot, dpi=90)
last = {term: float(np.mean([log[term] for log in recipe_log.logs[-20:]])) for term in terms}
print("\nloss terms over the last 20 steps: " + ", ".join(f"{term} {last[term]:.3f}" for term in terms)
      + f"; plot: {plot}")

# === Stage D: active data curation (ACID) ===
# A frozen, trained reference picks what a learner trains on: pairs the reference
# finds easy and the learner hard. Web captions are noisy; here half the pairs of
# every super-batch of 32 get another image's caption. A fresh learner (the initial
# weights) trains on the 16 pairs a joint selection keeps, with the trained plain
# model as the reference (the paper distils B/16 from a stronger So400m this way).
rng = np.random.default_rng(0)


def noisy_super_batch(batch):
    """Half the pairs (random) get the next noisy pair's caption; `clean` marks the rest."""
    noisy = rng.permutation(BATCH)[:BATCH // 2]
    tokens = np.array(batch["token_ids"])
    tokens[noisy] = tokens[np.roll(noisy, 1)]
    clean = np.ones(BATCH, bool)
    clean[noisy] = False
    return {"images": np.asarray(batch["images"]), "token_ids": tokens}, clean


super_batches = [noisy_super_batch(batch) for batch in plain_data.skip(7).take(12).as_numpy_iterator()]
curation = ks.models.ActiveCurationTrainer(initial_backbone(), plain, filter_ratio=0.5, num_chunks=4, seed=0)
curation.compile(optimizer=ks.optimizers.SigLIPAdamW(1e-3, weight_decay=0.0))
history = curation.fit(
    {key: np.concatenate([x[key] for x, _ in super_batches[:8]]) for key in ("images", "token_ids")},
    batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
kept = [clean[keras.ops.convert_to_numpy(curation(x, training=True)["selection"])].mean()
        for x, clean in super_batches[8:]]
curated = {key: history.history[key][-1] for key in ("learnability", "random_learnability")}
print(f"\nstage D (ACID): the selected half holds {np.mean(kept):.0%} correctly captioned pairs "
      f"(the super-batch 50%); learnability of the selection {curated['learnability']:.2f} vs "
      f"{curated['random_learnability']:.2f} for a random half")

# What this guide promises: both models learn well above chance (zero-shot at least
# 2.5x chance, over 4 standard deviations above it on 400 images; retrieval at least
# 5x chance), stage B ran, and curation keeps clean pairs.
for name, result in results.items():
    if result["zero-shot accuracy"] < 2.5 / 48 or result["retrieval R@1"] < 5 / len(test_images):
        raise SystemExit(f"{name} did not learn: {result}")
if not (last["distillation_loss"] > 0 and last["masked_prediction_loss"] > 0):
    raise SystemExit("Stage B never started.")
# Curation keeps clean pairs (a random half holds 50%; over 4 super-batches of 16
# selected pairs, 70% is 3.2 standard deviations above it) and beats random learnability.
if np.mean(kept) < 0.7 or curated["learnability"] <= curated["random_learnability"]:
    raise SystemExit(f"Active curation did not prefer clean pairs: {np.mean(kept):.2f} clean, {curated}.")
