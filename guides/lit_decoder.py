"""Guide: LiT-decoder, many tasks from one frozen image encoder and a small decoder.

LiT-decoder (Beyer et al., 2023, "A Study of Autoregressive Decoders for
Multi-Tasking in Computer Vision") keeps a pretrained image encoder frozen and
trains only a small text decoder on a mixture of tasks, each named by a text
prompt: classification (the answer is the class name), captioning, question
answering. One model, one loss (next-token prediction on the answer), one
decoding loop for every task.

Text reading (the "read" task of `ks.data.SHAPES_TASKS`: a two-digit number
written in a corner, `ShapesDataset(number_prob=...)`) gets its own decoder on
the same frozen encoder at the end: the encoder never saw text in its
contrastive training, yet its patch tokens keep enough of the pixels to read
from (a linear probe on them finds each digit 63-71% of the time on held-out
images). Measured at this budget: alone, the reader learns (about two thirds of
held-out numbers exactly); as a seventh task in the mixture, with a quarter of
the steps, it stays near 5% and costs the other tasks 30 points. The prompt
is spelt out character by character by this small vocabulary (21 tokens), so
the sequence length must leave room for it and the answer: with 24 the answer
was cut and nothing could be learnt.

Here the encoder is the image tower of the shipped `siglip2_shapes_tiny`
preset (a SigLIP 2 contrastive model); `LiTDecoder.from_preset` takes it,
freezes it and adds a 2-block decoder. The tasks are mixed in `tf.data` by
`ks.data.mix_tasks`; answers on held-out images are generated with the
KV-cached decoder and scored by exact match. Runs offline. `--quick` leaves the
reader out (about half the time; what CI runs on every backend, with the full
guide in one backend's pass): with half the steps neither decoder learns what
is asserted (count 66% against a majority of 53.5%, reading 5%).

    python guides/lit_decoder.py [--quick]
"""

import sys
import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.data import shapes

QUICK = "--quick" in sys.argv[1:]
keras.utils.set_random_seed(0)
model = ks.models.LiTDecoder.from_preset(
    "siglip2_shapes_tiny", decoder_width=96, decoder_depth=2, decoder_num_heads=4,
    decoder_mlp_dim=192, sequence_length=24,
)
encoder = model.backbone.vision_encoder
print(f"LiT-decoder: {ks.transfer.trainable_parameter_count(model):,} of {model.count_params():,} "
      f"weights train (the decoder); the image encoder is frozen: {not encoder.trainable}")

QUESTIONS = ("class", "color", "shape", "count", "background")
TASKS = QUESTIONS + ("caption",)
train = shapes.ShapesDataset(2000, seed=50)
mixture = ks.data.mix_tasks(ks.data.shapes_task_datasets(train, TASKS), seed=0, batch_size=64)
steps = 360
schedule = keras.optimizers.schedules.CosineDecay(
    0.0, decay_steps=steps, warmup_target=2e-3, warmup_steps=steps // 10
)
model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=1.0))
encoder_weights = [keras.ops.convert_to_numpy(w) for w in encoder.weights]
start = time.time()
history = model.fit(mixture, steps_per_epoch=steps // 3, epochs=3, verbose=0)
print(f"trained {steps} steps of 64 mixed-task examples in {time.time() - start:.0f}s; "
      f"loss per epoch {', '.join(f'{x:.2f}' for x in history.history['loss'])}, "
      f"token accuracy {history.history['token_accuracy'][-1]:.1%}")

held_out = shapes.ShapesDataset(200, seed=51)  # never trained on
print(f"\nheld-out exact match on {len(held_out)} images (majority answer in brackets):")
results = {}
evaluation = ks.data.shapes_task_arrays(held_out, TASKS)
for task in QUESTIONS:
    data = evaluation[task]
    accuracy = model.answer_accuracy(data["images"], data["prompts"][0], data["targets"])
    _, counts = np.unique(data["targets"], return_counts=True)
    results[task] = accuracy, counts.max() / counts.sum()
    print(f"  {task:<10} {repr(str(data['prompts'][0])):<30} {accuracy:6.1%}   [{results[task][1]:.1%}]")

data = evaluation["caption"]
for target, answer in zip(data["targets"][:3], model.answer(data["images"][:3], "caption")):
    print(f"  caption: {answer!r} (a training caption of the image's kind: {str(target)!r})")


def learn_to_read():
    """Text reading: a second decoder on the same frozen encoder, trained on the
    read task alone (every training image carries a number). Its held-out exact match."""
    reader = ks.models.LiTDecoder.from_preset(
        "siglip2_shapes_tiny", decoder_width=96, decoder_depth=2, decoder_num_heads=4,
        decoder_mlp_dim=192, sequence_length=32,
    )
    reading = ks.data.shapes_task_datasets(shapes.ShapesDataset(3000, seed=52, number_prob=1.0), "read")
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=2e-3, warmup_steps=steps // 10
    )
    reader.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4, global_clipnorm=1.0))
    start = time.time()
    reader.fit(ks.data.mix_tasks(reading, seed=1, batch_size=64), steps_per_epoch=steps // 3, epochs=3, verbose=0)
    data = ks.data.shapes_task_arrays(shapes.ShapesDataset(200, seed=53, number_prob=1.0), "read")
    read_accuracy = reader.answer_accuracy(data["images"], data["prompts"][0], data["targets"])
    answers = reader.answer(data["images"][:6], data["prompts"][0])
    print(f"\ntext reading ({steps} steps alone, {time.time() - start:.0f}s): {read_accuracy:.1%} of 200 held-out "
          f"two-digit numbers read exactly (chance 1.1%); e.g. " + ", ".join(
              f"{t} -> {a}" for t, a in zip(data["targets"][:6], answers)))
    return read_accuracy


read_accuracy = None if QUICK else learn_to_read()
unchanged = all(np.array_equal(a, keras.ops.convert_to_numpy(b))
                for a, b in zip(encoder_weights, encoder.weights))
print(f"image encoder unchanged by training: {unchanged}")
if not unchanged or any(accuracy < majority + 0.2 for accuracy, majority in results.values()):
    raise SystemExit("LiT-decoder did not learn every task (>= majority + 20 points).")
if read_accuracy is not None and read_accuracy < 0.3:
    raise SystemExit(f"The reader did not learn to read ({read_accuracy:.1%} < 30%).")
