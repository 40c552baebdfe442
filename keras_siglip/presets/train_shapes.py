"""Train the shipped `siglip2_shapes_tiny` preset on the procedural shapes data set.

    python -m keras_siglip.presets.train_shapes [--out DIR] [--epochs 6]

A SigLIP 2-style model (Gemma-style special tokens: pad 0, EOS 1, no BOS; text
padded with <pad>) with a SentencePiece vocabulary trained on the captions,
trained from scratch with `fit` and the sigmoid loss (t = log 10, b = -10), then
evaluated zero-shot on held-out images (another seed) with colour + shape labels.
"""

import argparse
import datetime
import io
import json
import os
import time

import keras
import numpy as np

from keras_siglip.data import shapes
from keras_siglip.models import (
    SigLIPBackbone,
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTextEncoder,
    SigLIPTokenizer,
    SigLIPVisionEncoder,
    SigLIPZeroShotClassifier,
)
from keras_siglip.presets import PRESETS_DIR
from keras_siglip.utils.preset import atomic_directory

NAME = "siglip2_shapes_tiny"
IMAGE_SIZE = 48
SEQUENCE_LENGTH = 16


def train_sentencepiece(texts, vocabulary_size=384):
    """A unigram SentencePiece model with Gemma's special-token layout."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>", unk_piece="<unk>",
        character_coverage=1.0,
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def build_backbone(vocabulary_size, patch_size=6):
    vision = SigLIPVisionEncoder(
        patch_size=patch_size, width=128, depth=3, num_heads=4, mlp_dim=256, image_size=IMAGE_SIZE
    )
    text = SigLIPTextEncoder(
        vocabulary_size=vocabulary_size, width=128, depth=2, num_heads=4, mlp_dim=256,
        sequence_length=SEQUENCE_LENGTH, num_classes=128,
    )
    return SigLIPBackbone(vision, text, temperature_init=10.0, bias_init=-10.0)


def zero_shot_accuracy(backbone, preprocessor, num_images=500, seed=1):
    """Top-1 accuracy over the 48 colour x shape labels on held-out images."""
    names = shapes.class_names()
    classifier = SigLIPZeroShotClassifier(
        backbone, preprocessor,
        class_names=[shapes.with_article(n) for n in names],
        templates=shapes.PROMPT_TEMPLATES,
    )
    held_out = shapes.ShapesDataset(num_images, seed=seed, image_size=IMAGE_SIZE).arrays()
    probabilities = classifier.predict(held_out["images"], batch_size=250, verbose=0)
    return float(np.mean(np.argmax(probabilities, -1) == held_out["labels"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(PRESETS_DIR, NAME))
    parser.add_argument("--num-train", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.time()

    print(f"Generating {args.num_train} training images ...", flush=True)
    train = shapes.ShapesDataset(args.num_train, seed=args.seed, image_size=IMAGE_SIZE).arrays()
    prompts = [t.format(p) for t in shapes.PROMPT_TEMPLATES for p in map(shapes.with_article, shapes.class_names())]
    tokenizer = SigLIPTokenizer(
        proto=train_sentencepiece(list(train["captions"]) + prompts), pad_token="<pad>"
    )
    preprocessor = SigLIPPreprocessor(
        tokenizer, SigLIPImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
        sequence_length=SEQUENCE_LENGTH,
    )
    x = preprocessor({"images": train["images"], "texts": train["captions"]})
    x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}

    backbone = build_backbone(tokenizer.vocabulary_size(), args.patch_size)
    steps = args.epochs * (args.num_train // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=args.learning_rate, warmup_steps=max(1, steps // 10)
    )
    backbone.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=1e-4, beta_2=0.95, global_clipnorm=1.0
        )
    )
    print(f"Training {backbone.count_params():,} parameters for {args.epochs} epochs ...", flush=True)
    history = backbone.fit(x, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=2)

    accuracy = zero_shot_accuracy(backbone, preprocessor)
    minutes = (time.time() - start) / 60
    print(f"Zero-shot accuracy on 500 held-out images, 48 labels: {accuracy:.1%} ({minutes:.1f} min)")

    # A fresh copy without the optimizer state keeps the shipped files small.
    export = SigLIPBackbone.from_config(backbone.get_config())
    export.set_weights(backbone.get_weights())
    with atomic_directory(args.out) as tmp:
        export.save_to_preset(tmp)
        preprocessor.save_to_preset(tmp)
        card = {
            "name": NAME,
            "description": "Tiny SigLIP 2-style model trained on the procedural shapes data set.",
            "zero_shot_accuracy": accuracy,
            "evaluation": "top-1 over 48 colour x shape labels, 500 held-out images (seed 1), "
                          f"templates {list(shapes.PROMPT_TEMPLATES)}",
            "training": {**vars(args), "out": None, "final_loss": history.history["loss"][-1],
                         "backend": keras.config.backend(), "minutes": round(minutes, 2),
                         "date": datetime.date.today().isoformat()},
            "params": backbone.count_params(),
        }
        with open(os.path.join(tmp, "card.json"), "w") as f:
            json.dump(card, f, indent=2)
    print(f"Saved {args.out}")
    return accuracy


if __name__ == "__main__":
    main()
