"""Guide: CapPa, a captioner pretrained with parallel prediction.

CapPa (Tschannen et al., 2023, "Image Captioners Are Scalable Vision Learners
Too") trains a ViT encoder and a text decoder on image-caption pairs. Three in
four examples are decoded in *parallel prediction* mode: every decoder input is
[MASK] and attention is bidirectional, so the decoder cannot lean on the
previous words and the image encoder has to carry the caption. The rest are
ordinary autoregressive (teacher-forced) examples, and the model captions
autoregressively.

Here a tiny CapPa learns the procedural shapes data (a word-level vocabulary
trained on the captions), then captions held-out images with the KV-cached
greedy decoder and classifies them zero-shot by scoring class prompts
(big_vision's scoring classifier). Learning to see shapes from scratch takes
this tiny ViT about a million examples (the shipped preset's budget, tens of
CPU minutes), so the encoder starts from the shipped SigLIP 2 image tower
(`siglip2_shapes_tiny`, same ViT) and the decoder from scratch: the decoder
learns on the frozen encoder first, then everything trains. Runs offline.

`--quick` (the configuration CI runs on every backend) trains on 1,500 pairs
instead of 3,000, in batches of 16 instead of 64, for 3 + 1 epochs instead of
4 + 3; the thresholds asserted are the same. Held-out captions naming the right
colour, shape and count / zero-shot top-1 (chance 2.1%):

    quick   JAX 54.5% / 76.0%, TensorFlow 55.0% / 60.0%, torch 45.0% / 53.5%
    full    JAX 67.5% / 81.0%, TensorFlow 42.0% / 58.0% (measured before `fit`
            reshuffled the pairs every epoch)

    python guides/cappa.py [--quick]
"""

import sys
import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.data import shapes

QUICK = "--quick" in sys.argv[1:]
keras.utils.set_random_seed(0)
train = shapes.ShapesDataset(1500 if QUICK else 3000, seed=60).arrays()
held_out = shapes.ShapesDataset(200, seed=61)  # never trained on
held = held_out.arrays()

tokenizer = ks.models.SigLIPTokenizer.from_texts(
    list(train["captions"]) + shapes.class_prompts(), vocabulary_size=200
)
preprocessor = ks.models.CapPaPreprocessor(
    tokenizer, ks.models.SigLIPImageConverter(image_size=(48, 48)), sequence_length=16
)
tower = ks.models.SigLIPBackbone.from_preset("siglip2_shapes_tiny").vision_encoder.vit
backbone = ks.models.CapPaBackbone(
    vocabulary_size=tokenizer.vocabulary_size(), patch_size=tower.patch_size, width=tower.width,
    depth=tower.depth, num_heads=tower.num_heads, mlp_dim=tower.mlp_dim, image_size=48,
    max_length=16, decoder_width=64, decoder_depth=2, decoder_num_heads=4, decoder_mlp_dim=128,
)
for part in ("embedding", "position_embedding", "encoder"):  # all but the MAP head
    getattr(backbone.vit, part).set_weights(getattr(tower, part).get_weights())
model = ks.models.CapPaCaptioner(backbone, preprocessor, masked_pred_prob=0.75, seed=0)
print(f"CapPa: {backbone.count_params():,} weights, vocabulary {tokenizer.vocabulary_size()} words, "
      f"75% of training examples in parallel-prediction mode")

# Two phases: the new decoder first learns on the frozen encoder (a random
# decoder's gradients would wreck the pretrained features), then everything
# trains together at a lower learning rate.
pairs = {"images": train["images"], "texts": train["captions"]}
# Quick: smaller batches (more updates per example) and one epoch of the costly phase 2.
batch_size = 16 if QUICK else 64
phases = ((3, 2e-3, False), (1, 3e-4, True)) if QUICK else ((4, 2e-3, False), (3, 3e-4, True))
start = time.time()
for phase, (epochs, learning_rate, encoder_trains) in enumerate(phases):
    backbone.vit.trainable = encoder_trains
    steps = epochs * (len(train["captions"]) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=learning_rate, warmup_steps=steps // 10
    )
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=1.0))
    history = model.fit(pairs, batch_size=batch_size, epochs=epochs, verbose=0)
    print(f"phase {phase + 1} ({'all weights' if encoder_trains else 'decoder only'}): {steps} steps, "
          f"loss per epoch {', '.join(f'{x:.2f}' for x in history.history['loss'])}")
print(f"trained in {time.time() - start:.0f}s")

evaluation = model.evaluate({"images": held["images"], "texts": held["captions"]},
                            batch_size=100, verbose=0, return_dict=True)
captions = model.generate(held["images"])
exact = np.mean([c == r for c, r in zip(captions, held["captions"])])


def names_the_shapes(caption, attributes):
    """The caption says the right colour, shape (plural when there are several) and count."""
    noun = attributes.shape if attributes.count == 1 else shapes._PLURALS[attributes.shape]
    count = {1: "a", 2: "two", 3: "three"}[attributes.count]
    words = caption.split()
    return (f"{attributes.color} {noun}" in caption and count in words
            and (attributes.count > 1 or "an" in words or "a" in words))


attributes = [held_out[i]["attributes"] for i in range(len(held_out))]
right = np.mean([names_the_shapes(c, a) for c, a in zip(captions, attributes)])
scores = model.class_log_likelihoods(held["images"], shapes.class_prompts())
top1 = np.mean(scores.argmax(1) == held["labels"])
print(f"\nheld-out, {len(held_out)} images:")
print(f"  teacher-forced token accuracy {evaluation['token_accuracy']:.1%}")
print(f"  greedy captions equal to the reference caption: {exact:.1%} "
      "(references pick one of 10 templates and drop size/position at random)")
print(f"  greedy captions naming the right colour, shape and count: {right:.1%}")
print(f"  zero-shot top-1 by scoring {len(shapes.class_names())} class prompts: {top1:.1%} "
      f"(chance {1 / len(shapes.class_names()):.1%})")
for caption, reference in list(zip(captions, held["captions"]))[:4]:
    print(f"  {caption!r:<45} reference {str(reference)!r}")
if right < 0.25 or top1 < 0.3:
    raise SystemExit("CapPa did not learn to caption the shapes.")
