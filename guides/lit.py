"""Guide: LiT, locked-image text tuning: teach a new text tower a pretrained image tower.

LiT (Zhai et al., 2022) keeps a pretrained image tower frozen ("locked") and trains
only the text tower (and the contrastive head's temperature and bias) with the
contrastive loss. The image embeddings stay exactly as they were: the text tower
learns to point at them. It is cheap (no image-tower gradients) and keeps the image
features that made the tower good.

`ks.transfer.lock_image_tower(backbone)` sets the trainable flags (image tower
frozen, text tower trainable); compile after it, as always in Keras when trainable
flags change.

Here the image tower comes from the shipped `siglip2_shapes_tiny` preset and the
text tower is new, randomly initialised (LiT's from-scratch text tower), so
zero-shot classification starts at chance and climbs as the text tower learns.
Runs offline. `--quick` trains on 2,000 pairs instead of 3,000
(the configuration CI runs on every backend; the claims asserted are the same). Measured
after LiT, top-1: 66.3% / 72.0% / 74.0% in full, 55.3% / 57.7% / 58.3% quick (JAX /
TensorFlow / torch).

    python guides/lit.py [--quick]
"""

import sys
import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.data import shapes

QUICK = "--quick" in sys.argv[1:]
PRESET = "siglip2_shapes_tiny"
preprocessor = ks.models.SigLIPPreprocessor.from_preset(PRESET)
pretrained = ks.models.SigLIPBackbone.from_preset(PRESET)

# A new text tower of the preset's architecture with random weights; the image
# tower is the pretrained one (the same object, shared).
keras.utils.set_random_seed(0)
text_config = {**pretrained.text_encoder.get_config(), "name": "new_text_encoder"}
backbone = ks.models.SigLIPBackbone(
    pretrained.vision_encoder, ks.models.SigLIPTextEncoder.from_config(text_config)
)
ks.transfer.lock_image_tower(backbone)
print(f"LiT: {ks.transfer.trainable_parameter_count(backbone):,} of "
      f"{backbone.count_params():,} weights train (text tower, t and b)")

labels = [shapes.with_article(name) for name in shapes.class_names()]
held_out = shapes.ShapesDataset(300, seed=41).arrays()  # seeds never trained on


def zero_shot(model):
    classifier = ks.models.SigLIPZeroShotClassifier(
        model, preprocessor, class_names=labels, templates=shapes.PROMPT_TEMPLATES
    )
    probabilities = classifier.predict(held_out["images"], batch_size=300, verbose=0)
    return np.mean(probabilities.argmax(-1) == held_out["labels"])


before = zero_shot(backbone)
chance = 1 / len(labels)
print(f"zero-shot top-1 over {len(labels)} labels before LiT: {before:.1%} (chance {chance:.1%})")
# A random text tower is near chance (1.3% on JAX, 7.0% on TensorFlow: its random init), far
# below what LiT reaches.
assert before < 5 * chance, f"a fresh text tower should be near chance, got {before:.1%}"

# Train on image-caption pairs with the sigmoid loss (the backbone's `fit`).
train = shapes.ShapesDataset(2000 if QUICK else 3000, seed=40).arrays()
pairs = preprocessor({"images": train["images"], "texts": train["captions"]})
pairs = {k: keras.ops.convert_to_numpy(v) for k, v in pairs.items()}
epochs, batch_size, learning_rate = 3, 100, 1e-3
steps = epochs * (len(train["captions"]) // batch_size)
schedule = keras.optimizers.schedules.CosineDecay(
    0.0, decay_steps=steps, warmup_target=learning_rate, warmup_steps=steps // 10
)
backbone.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=1.0))
image_weights = [keras.ops.convert_to_numpy(w) for w in backbone.vision_encoder.weights]
start = time.time()
history = backbone.fit(pairs, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
print(f"trained {epochs} epochs on {len(train['captions'])} pairs in {time.time() - start:.0f}s, "
      f"loss per epoch: {', '.join(f'{x:.2f}' for x in history.history['loss'])}")

after = zero_shot(backbone)
print(f"zero-shot top-1 after LiT: {after:.1%}")
unchanged = all(
    np.array_equal(a, keras.ops.convert_to_numpy(b))
    for a, b in zip(image_weights, backbone.vision_encoder.weights)
)
print(f"image tower unchanged: {unchanged}")
# The claim: locked image tower, and zero-shot climbs from chance to far above it.
assert unchanged, "LiT must not change the locked image tower"
assert history.history["loss"][-1] < history.history["loss"][0]
assert after > 10 * chance and after > before + 0.3, f"after LiT {after:.1%} vs before {before:.1%}"
print(f"the pretrained model, for reference: {zero_shot(pretrained):.1%}")
