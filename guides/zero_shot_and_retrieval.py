"""Guide: zero-shot classification and image-text retrieval with a SigLIP preset.

Runs offline on the shipped `siglip2_shapes_tiny` preset and the procedural shapes
data set; swap in any converted SigLIP / SigLIP 2 preset folder for real photos.

    python guides/zero_shot_and_retrieval.py
"""

import numpy as np
from keras import ops

import keras_siglip as ks
from keras_siglip.data import shapes
from keras_siglip.presets import SHIPPED_PRESETS, shipped_metadata

PRESET = "siglip2_shapes_tiny"

# 1. Load the two towers and the matching preprocessing.
backbone = ks.models.SigLIPBackbone.from_preset(PRESET)
preprocessor = ks.models.SigLIPPreprocessor.from_preset(PRESET)

# 2. Zero-shot classification. SigLIP scores every (image, label) pair with an
#    independent sigmoid probability, so probabilities do not sum to one; rank
#    them, or threshold them for multi-label use.
labels = [shapes.with_article(name) for name in shapes.class_names()]
classifier = ks.models.SigLIPZeroShotClassifier(
    backbone, preprocessor, class_names=labels, templates=shapes.PROMPT_TEMPLATES
)
held_out = shapes.ShapesDataset(200, seed=123).arrays()  # a seed never trained on
probabilities = classifier.predict(held_out["images"], batch_size=100, verbose=0)
accuracy = np.mean(probabilities.argmax(-1) == held_out["labels"])
chance = 1 / len(labels)
print(f"zero-shot top-1 over {len(labels)} labels: {accuracy:.1%} (chance {chance:.1%})")
assert accuracy > 20 * chance, f"zero-shot top-1 {accuracy:.1%} is not far above chance {chance:.1%}"
# The preset's card measured it on 500 other held-out images: the two agree within 4 standard
# deviations of their difference (binomial), or the model, its weights or its preprocessing moved.
card = shipped_metadata(SHIPPED_PRESETS[PRESET])["zero_shot_accuracy"]
margin = 4 * np.sqrt(card * (1 - card) * (1 / 200 + 1 / 500))
print(f"  the preset's card: {card:.1%} on 500 images (agreement asserted within {margin:.1%})")
assert abs(accuracy - card) < margin, f"zero-shot top-1 {accuracy:.1%}, the card says {card:.1%}"
for label, p in classifier.classify(held_out["images"][0], top_k=3)[0]:
    print(f"  {p:.3f}  {label}")

# 3. Retrieval: embed images and their captions, then Recall@K both ways.
x = preprocessor({"images": held_out["images"], "texts": held_out["captions"]})
image_embeddings = ops.convert_to_numpy(backbone.encode_images(x["images"]))
text_embeddings = ops.convert_to_numpy(backbone.encode_texts(x["token_ids"]))
recall = ks.metrics.retrieval_recall(
    image_embeddings, text_embeddings, text_to_image=np.arange(200), ks=(1, 5, 10)
)
print("image -> text recall:", recall["image_to_text"])
print("text -> image recall:", recall["text_to_image"])
# Chance Recall@K over 200 candidates is K / 200 (5% at K = 10).
for direction in ("image_to_text", "text_to_image"):
    assert recall[direction][10] > 5 * 10 / 200, (direction, recall[direction])
