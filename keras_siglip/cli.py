"""The `keras-siglip` command.

    keras-siglip presets
    keras-siglip zero-shot --preset P IMAGE... --labels L1 L2 ...
    keras-siglip embed --preset P [--texts T ...] [IMAGE ...] --out embeddings.npy
    keras-siglip demo [--preset P] [--out demo.png]
"""

import argparse
import os
import sys

DEFAULT_PRESET = "siglip2_shapes_tiny"


def _quiet():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def read_image(path):
    """An image file as a uint8 RGB array `(H, W, 3)`."""
    import numpy as np
    from PIL import Image

    if not os.path.isfile(path):
        raise SystemExit(f"keras-siglip: no such image file: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load(preset):
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor

    try:
        return SigLIPBackbone.from_preset(preset), SigLIPPreprocessor.from_preset(preset)
    except ValueError as error:
        raise SystemExit(f"keras-siglip: {error}")


def cmd_presets(args):
    from keras_siglip.presets import PUBLISHED_PRESETS, SHIPPED_PRESETS
    from keras_siglip.models.siglip.siglip_presets import _shipped_metadata

    print("Shipped (load offline by name):")
    for name, path in SHIPPED_PRESETS.items():
        meta = _shipped_metadata(path)
        accuracy = meta.get("zero_shot_accuracy")
        extra = f", zero-shot {accuracy:.1%}" if accuracy is not None else ""
        print(f"  {name:34s} {meta['params']:>13,} params{extra}  {meta['description']}")
    from keras_siglip.presets import recipe_presets

    print("Published checkpoints (architecture cards; weights at the sources shown):")
    for name, card in PUBLISHED_PRESETS.items():
        meta = card["metadata"]
        print(f"  {name:34s} {meta['params']:>13,} params  {meta['description']}")
        if args.verbose:
            for where, source in card["sources"].items():
                print(f"      {where:12s} {source}")
    from keras_siglip.presets import pali_gemma_presets

    print("PaliGemma 1 / 2 checkpoints (architecture cards: PaliGemmaBackbone.from_preset(name, "
          "load_weights=False); weights: keras-siglip convert the Hugging Face folder):")
    for name, card in pali_gemma_presets().items():
        meta = card["metadata"]
        print(f"  {name:34s} {meta['params']:>13,} params  {meta['description']}")
        if args.verbose:
            for where, source in card["sources"].items():
                print(f"      {where:12s} {source}")
    print("Recipes (architecture cards; no weights were published; load_weights=False):")
    for name, card in recipe_presets().items():
        meta = card["metadata"]
        print(f"  {name:34s} {meta['params']:>13,} params  {meta['description']}")


def cmd_zero_shot(args):
    from keras_siglip.models import SigLIPZeroShotClassifier

    images = [read_image(path) for path in args.images]
    backbone, preprocessor = load(args.preset)
    classifier = SigLIPZeroShotClassifier(
        backbone, preprocessor, class_names=args.labels, templates=args.templates
    )
    for path, ranked in zip(args.images, classifier.classify(images, top_k=args.top_k)):
        print(path)
        for label, probability in ranked:
            print(f"  {probability:8.4f}  {label}")


def cmd_embed(args):
    import numpy as np
    from keras import ops

    if bool(args.images) == bool(args.texts):
        raise SystemExit("keras-siglip embed: give either IMAGE files or --texts, not both.")
    backbone, preprocessor = load(args.preset)
    if args.texts:
        embeddings = backbone.encode_texts(preprocessor.pack_texts(args.texts))
    else:
        images = np.stack(
            [ops.convert_to_numpy(preprocessor.convert_images(read_image(p))) for p in args.images]
        )
        embeddings = backbone.encode_images(images)
    embeddings = ops.convert_to_numpy(embeddings)
    np.save(args.out, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {args.out}")


def cmd_demo(args):
    """Zero-shot classify held-out shapes images and draw the predictions."""
    import numpy as np

    from keras_siglip.data import shapes
    from keras_siglip.models import SigLIPZeroShotClassifier
    from keras_siglip.plots import prediction_grid

    backbone, preprocessor = load(args.preset)
    size = backbone.vision_encoder.image_size[0]
    names = shapes.class_names()
    classifier = SigLIPZeroShotClassifier(
        backbone, preprocessor,
        class_names=[shapes.with_article(n) for n in names],
        templates=shapes.PROMPT_TEMPLATES,
    )
    data = shapes.ShapesDataset(args.num_images, seed=args.seed, image_size=size).arrays()
    probabilities = classifier.predict(data["images"], batch_size=100, verbose=0)
    predicted = np.argmax(probabilities, axis=-1)
    accuracy = float(np.mean(predicted == data["labels"]))
    print(f"Zero-shot accuracy on {args.num_images} held-out shapes images "
          f"({len(names)} labels): {accuracy:.1%}")
    shown = min(args.num_images, 24)
    prediction_grid(
        data["images"][:shown],
        [f"{names[p]} {probabilities[i, p]:.2f}" for i, p in enumerate(predicted[:shown])],
        correct=(predicted == data["labels"])[:shown],
        path=args.out,
    )
    print(f"Wrote {args.out}")


def cmd_convert(args):
    from keras_siglip import convert

    if args.to == "huggingface":
        from keras_siglip.convert.huggingface import write_huggingface
        from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor

        backbone = SigLIPBackbone.from_preset(args.source)
        tokenizer = None
        try:
            tokenizer = SigLIPPreprocessor.from_preset(args.source).tokenizer
        except (ValueError, FileNotFoundError):
            pass  # a preset without a tokenizer exports the model alone
        write_huggingface(backbone, args.destination, tokenizer=tokenizer)
    else:
        convert.convert(args.source, args.destination, config=args.preset, tokenizer=args.tokenizer)
    print(f"Wrote {args.destination}")


def main(argv=None):
    _quiet()
    parser = argparse.ArgumentParser(prog="keras-siglip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list presets")
    p.add_argument("-v", "--verbose", action="store_true", help="show weight sources")
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("zero-shot", help="rank labels for images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--templates", nargs="+", default=["a photo of {}"])
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(run=cmd_zero_shot)

    p = sub.add_parser("embed", help="write image or text embeddings to .npy")
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--texts", nargs="+")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser(
        "convert", help="big_vision .npz | Hugging Face folder | keras-hub preset -> keras_siglip preset "
                        "(SigLIP, PaliGemma 1/2, CapPa; the model is read from the checkpoint)"
    )
    p.add_argument("source", help="a big_vision .npz (SigLIP, PaliGemma or CapPa), an HF SigLIP or "
                                  "PaliGemma folder, a keras-hub preset folder (or a preset of ours with "
                                  "--to huggingface)")
    p.add_argument("destination", help="the folder to write (replaced atomically)")
    p.add_argument("--preset", default=None,
                   help="big_vision only: the published preset name whose architecture the .npz holds "
                        "(else inferred from the shapes); for PaliGemma it also sets the Gemma 2 soft caps")
    p.add_argument("--tokenizer", default=None, metavar="SPM",
                   help="a SentencePiece model to bundle when the source has none (big_vision .npz)")
    p.add_argument("--to", choices=("keras_siglip", "huggingface"), default="keras_siglip",
                   help="huggingface: export a keras_siglip preset to a transformers folder")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("demo", help="zero-shot on held-out shapes images, with a picture")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="keras_siglip_demo.png")
    p.set_defaults(run=cmd_demo)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
