"""Guide: a SigLIP image tower as an image classifier: linear probe, LoRA, full fine-tuning.

`SigLIPImageClassifier` puts a new Dense head on the image tower's pooled (MAP head)
embedding, following keras-hub's `ImageClassifier` (`fit` on raw images and integer
labels, `predict`, `save_to_preset`). Three ways to train it, from the least to the
most weights that move:

- linear probe: `classifier.backbone.trainable = False`, then `compile()`; only the
  head trains;
- LoRA: `ks.transfer.enable_lora(classifier, rank)`; low-rank factors on the
  attention query / value projections, plus the head;
- full fine-tuning: every weight trains (the state after construction).

Runs offline on the shipped `siglip2_shapes_tiny` preset and the procedural shapes
data set (48 colour x shape classes, a few labelled images per class); swap in any
converted SigLIP / SigLIP 2 preset and your own labelled images.

    python guides/image_classifier.py
"""

import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.data import shapes

PRESET = "siglip2_shapes_tiny"
NUM_CLASSES = len(shapes.class_names())  # 48

# Labelled images: ~12 per class for training, and held-out images (other seeds
# than the preset's training data).
train = shapes.ShapesDataset(600, seed=20).arrays()
test = shapes.ShapesDataset(300, seed=21).arrays()


def new_classifier():
    keras.utils.set_random_seed(0)
    # The image tower and image converter of a two-tower preset, a new head.
    return ks.models.SigLIPImageClassifier.from_preset(PRESET, num_classes=NUM_CLASSES)


def run(name, classifier, epochs=4):
    start = time.time()
    classifier.fit(train["images"], train["labels"], batch_size=50, epochs=epochs, verbose=0)
    _, accuracy = classifier.evaluate(test["images"], test["labels"], batch_size=300, verbose=0)
    params = ks.transfer.trainable_parameter_count(classifier)
    print(f"{name:<18} {params:>9,} {accuracy:>10.1%} {time.time() - start:>7.1f}s")
    return accuracy


classifier = new_classifier()
_, untrained = classifier.evaluate(test["images"], test["labels"], batch_size=300, verbose=0)
chance = 1 / NUM_CLASSES
print(f"{NUM_CLASSES} classes, {len(train['labels'])} training images, {len(test['labels'])} held out")
print(f"untrained head: {untrained:.1%} held-out accuracy (chance {chance:.1%})")
# A new head knows nothing: near chance (4x chance is 25 of the 300 images).
assert untrained < 4 * chance, f"an untrained head should be near chance, got {untrained:.1%}"

print(f"{'recipe':<18} {'trainable':>9} {'accuracy':>10} {'time':>8}")

# 1. Linear probe: freeze the image tower, then compile (Keras reads trainable
#    flags at compile time). The "auto" optimizer is Adam at 1e-2 when only the
#    head trains (a convex problem on fixed features).
classifier.backbone.trainable = False
classifier.compile()
probe = run("linear probe", classifier)

# 2. LoRA (rank 4) on the image tower's attention; the head trains as well
#    ("auto": Adam at 3e-3).
classifier = ks.transfer.enable_lora(new_classifier(), rank=4)
classifier.compile()
lora = run("LoRA rank 4", classifier)

# 3. Full fine-tuning. The "auto" optimizer (Adam 1e-4) suits large pretrained
#    towers; this small one, with 48 steps, takes a larger rate.
classifier = new_classifier()
classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
full = run("full fine-tuning", classifier)

# With ~12 labelled images per class, the recipes that keep the pretrained
# features fixed (probe) or nearly so (LoRA) do best: full fine-tuning starts
# from a random head whose large early gradients disturb the features, and
# overfits. Probing first and then fine-tuning everything at a small rate
# ("LP-FT") avoids that; with many labelled images, or images far from the
# pretraining data, full fine-tuning pulls ahead.
# The claims: every recipe learns the 48 classes from ~12 images each (over 20x
# chance), and a recipe that keeps the features does better than full fine-tuning.
for name, accuracy in (("linear probe", probe), ("LoRA", lora), ("full fine-tuning", full)):
    assert accuracy > 20 * chance, f"{name} reached only {accuracy:.1%}"
assert max(probe, lora) > full + 0.05, (probe, lora, full)
predictions = np.argmax(classifier.predict(test["images"][:3], verbose=0), axis=-1)
names = shapes.class_names()
print("full fine-tuning on three held-out images:")
for label, prediction in zip(test["labels"][:3], predictions):
    print(f"  true: {names[label]:<16} predicted: {names[prediction]}")
