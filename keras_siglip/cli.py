"""The `keras-siglip` command.

    keras-siglip presets
    keras-siglip zero-shot --preset P IMAGE... --labels L1 L2 ...
    keras-siglip embed --preset P [--texts T ...] [IMAGE ...] --out embeddings.npy
    keras-siglip convert SRC DST [--overwrite] [--to huggingface|keras-hub]
    keras-siglip export PRESET OUT --format saved_model|litert|onnx [--towers image,text]
                        [--input images|naflex] [--max-num-patches N] [--quantize MODE] [--overwrite]
    keras-siglip demo [--preset P] [--out demo.png]
    keras-siglip index DIR [--preset P] [--naflex N] [-o INDEX]
    keras-siglip search INDEX_OR_DIR "a red car at night" | --image QUERY.jpg [-k 20]
    keras-siglip dedup INDEX_OR_DIR [--threshold 0.95]
    keras-siglip eval zero-shot --data DIR [--preset P] [--class-names FILE] [--templates clip_paper | T ...]
    keras-siglip eval retrieval --images DIR --captions captions.json [--preset P]
    keras-siglip serve [--preset P] [--index INDEX_OR_DIR] [--host 127.0.0.1] [--port 8000]

Results go to standard output, progress and messages to standard error. An
expected failure (a bad file, path or argument, a checkpoint that does not fit)
is one line `keras-siglip: error: ...` and exit status 1; a usage error exits
with 2. `--debug` shows tracebacks and the frameworks' own start-up logs.
"""

import argparse
import contextlib
import os
import sys

DEFAULT_PRESET = "siglip2_shapes_tiny"
PROG = "keras-siglip"


class CLIError(Exception):
    """An expected failure: reported as one line, exit status 1."""


def _expected_errors():
    """Exceptions that are the user's input at fault, not a bug of ours."""
    return (CLIError, ValueError, OSError, UnicodeError, ImportError)  # ImportError: a missing extra


@contextlib.contextmanager
def _quiet_native_logs():
    """Send what C/C++ code writes to file descriptor 2 (TensorFlow, XLA and
    absl start-up logs) to /dev/null; Python's `sys.stderr` (our messages,
    progress bars, warnings) keeps writing to the real standard error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, captured)
        yield
        return
    python_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        # `saved` and its file object stay open: logging handlers created
        # meanwhile hold the file object and may still write at exit.
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr = python_stderr


def read_images(paths):
    """Image files as uint8 RGB arrays (EXIF-upright, 16-bit scaled, large
    files decoded at reduced size); a clear error names the bad file."""
    from keras_siglip.utils.images import read_image

    return [read_image(path) for path in paths]


def load(preset):
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor

    return SigLIPBackbone.from_preset(preset), SigLIPPreprocessor.from_preset(preset)


def cmd_presets(args):
    from keras_siglip.presets import (
        PUBLISHED_PRESETS, SHIPPED_PRESETS, pali_gemma_presets, recipe_presets, shipped_metadata,
    )
    from keras_siglip.presets.siglip2_recipes import COMMON, NOTES, RECIPES

    print("Shipped (load offline by name):")
    for name, path in SHIPPED_PRESETS.items():
        meta = shipped_metadata(path)
        accuracy = meta.get("zero_shot_accuracy")
        extra = f", zero-shot {accuracy:.1%}" if accuracy is not None else ""
        print(f"  {name:34s} {meta['params']:>13,} params{extra}  {meta['description']}")

    print("Published checkpoints (from_preset(name) downloads and converts once; -v: sources, cache):")
    for name, card in PUBLISHED_PRESETS.items():
        _print_published(name, card, args.verbose)

    print("PaliGemma 1 / 2 checkpoints (gated: accept the licence, set HF_TOKEN; load_weights=False "
          "builds the architecture offline):")
    for name, card in pali_gemma_presets().items():
        _print_published(name, card, args.verbose)
    print("Recipes (architecture cards; no weights were published; load_weights=False):")
    for name, card in recipe_presets().items():
        meta = card["metadata"]
        print(f"  {name:34s} {meta['params']:>13,} params  {meta['description']}")
    print("SigLIP 2 training recipe per size (ks.models.SigLIP2Pretrainer; all sizes: sigmoid + LocCa "
          "decoder 1:1, stage B from 80%: f_size * (1.0 L_l2g + 0.25 L_mask)):")
    for size, card in RECIPES.items():
        print(f"  {size:8s} image {card['vision']}/16, text {card['text']}, decoder depth {card['decoder_depth']}, "
              f"f_size {card['size_factor']}" + (f"; then {card['active_curation']}" if card["active_curation"] else ""))
    if args.verbose:
        for key, value in {**COMMON, **NOTES}.items():
            print(f"      {key:24s} {value}")


def _print_published(name, card, verbose):
    """A published card's line; verbose: its sources in order of preference,
    the size of its float32 weights, and whether its conversion is cached."""
    meta = card["metadata"]
    print(f"  {name:34s} {meta['params']:>13,} params  {meta['description']}")
    if not verbose:
        return
    from keras_siglip import hub
    for where, source in card["sources"].items():
        print(f"      {where:12s} {source}")
    folder = hub.cached_preset(name)
    if hub.is_cached(name):
        size = sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
        cached = f"cached: {folder} ({size / 1e9:.2f} GB)"
    else:
        cached = "not cached"
    print(f"      {'size':12s} {4 * meta['params'] / 1e9:.2f} GB in float32; {cached}")


def cmd_zero_shot(args):
    from keras_siglip.models import SigLIPZeroShotClassifier

    images = read_images(args.images)
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

    from keras_siglip.utils.preset import atomic_file

    out = _output_file(args.out)
    if args.texts:
        backbone, preprocessor = load(args.preset)
        embeddings = backbone.encode_texts(preprocessor.pack_texts(args.texts))
    else:
        images = read_images(args.images)
        backbone, preprocessor = load(args.preset)
        embeddings = backbone.encode_images(_model_images(preprocessor, images))
    embeddings = ops.convert_to_numpy(embeddings)
    with atomic_file(out, suffix=".npy") as tmp:
        np.save(tmp, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {out}")


def _model_images(preprocessor, images):
    """Raw images of any sizes -> one batch of the model's image inputs."""
    import numpy as np
    from keras import ops

    batches = [preprocessor.model_images(image[None]) for image in images]
    inputs = {k: np.concatenate([ops.convert_to_numpy(b[k]) for b in batches]) for k in batches[0]}
    return inputs["images"] if list(inputs) == ["images"] else inputs


def _output_file(path):
    """The absolute path a result file is written to, exactly as given; a clear
    error for a path that cannot be one."""
    if os.path.isdir(path):
        raise CLIError(f"--out {path} is a folder; give a file name ending in .npy.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CLIError(f"--out {path} exists and is not a regular file.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"--out {path}: the folder {parent} does not exist.")
    return os.path.abspath(path)


def cmd_demo(args):
    """Zero-shot classify held-out shapes images and draw the predictions."""
    import numpy as np

    from keras_siglip.data import shapes
    from keras_siglip.models import SigLIPZeroShotClassifier
    from keras_siglip.plots import prediction_grid

    out = _output_file(args.out)
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
    true_probability = float(np.mean(np.take_along_axis(probabilities, data["labels"][:, None], -1)))
    print(f"Zero-shot accuracy on {args.num_images} held-out shapes images "
          f"({len(names)} labels): {accuracy:.1%}; mean probability of the true label {true_probability:.2f}")
    shown = min(args.num_images, 24)
    prediction_grid(
        data["images"][:shown],
        [f"{names[p]} {probabilities[i, p]:.2f}" for i, p in enumerate(predicted[:shown])],
        correct=(predicted == data["labels"])[:shown],
        path=out,
    )
    print(f"Wrote {out}")


def cmd_index(args):
    from keras_siglip.search import ImageIndex

    index, report = ImageIndex.update(args.folder, index_path=args.out, preset=args.preset,
                                      max_num_patches=args.naflex, batch_size=args.batch_size)
    for path, reason in report.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    print(f"{index.path}: {len(index)} images ({report})")


def cmd_search(args):
    from keras_siglip.search import ImageIndex

    if (args.text is None) == (args.image is None):
        raise CLIError("give a TEXT to search for or --image QUERY (one of the two)")
    with ImageIndex(args.index) as index:
        _note_stale(index)
        for path, score in index.search(text=args.text, image=args.image, k=args.k):
            print(f"{score:.4f}\t{path}")


def cmd_dedup(args):
    from keras_siglip.search import ImageIndex

    with ImageIndex(args.index) as index:
        _note_stale(index)
        groups = index.duplicates(threshold=args.threshold)
        print(f"{len(groups)} groups of near duplicates among {len(index)} images "
              f"(cosine similarity >= {args.threshold})", file=sys.stderr)
    for number, group in enumerate(groups):
        print("\n".join(([""] if number else []) + group))


def _note_stale(index):
    changed = index.stale()
    if changed:
        print(f"note: {changed} files under {index.root} changed since the index was updated; "
              f"`{PROG} index {index.root}` brings it up to date", file=sys.stderr)


def cmd_eval_zero_shot(args):
    from keras_siglip import evaluate

    # One word without a slot names a template set.
    templates = args.templates[0] if len(args.templates) == 1 and "{}" not in args.templates[0] else args.templates
    result = evaluate.zero_shot(args.data, preset=args.preset, class_names=args.class_names, templates=templates,
                                batch_size=args.batch_size, max_num_patches=args.naflex)
    print(f"{result['num_images']} images, {result['num_classes']} classes, {result['num_templates']} templates")
    print(f"top-1 {result['top1']:.2%}")
    print(f"top-{min(5, result['num_classes'])} {result['top5']:.2%}")


def cmd_eval_retrieval(args):
    from keras_siglip import evaluate

    result = evaluate.retrieval(args.images, args.captions, preset=args.preset, batch_size=args.batch_size,
                                max_num_patches=args.naflex)
    print(f"{result['num_images']} images, {result['num_captions']} captions")
    for direction in ("image_to_text", "text_to_image"):
        print(f"{direction.replace('_', ' '):14s} " + "  ".join(
            f"R@{k} {value:.2%}" for k, value in result[direction].items()))


def cmd_serve(args):
    from keras_siglip.serve import serve

    preset = args.preset if args.preset or args.index else DEFAULT_PRESET
    serve(preset, args.index, host=args.host, port=args.port)


def _port(text):
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port lies in 1..65535; got {value}")
    return value


def cmd_convert(args):
    from keras_siglip import convert
    from keras_siglip.utils.memory import return_freed_tensors_to_the_system

    if args.own_process:  # a process-wide allocator setting: not inside a caller's process
        return_freed_tensors_to_the_system()

    exports = {"huggingface": convert.export_huggingface, "keras-hub": convert.export_keras_hub}
    if args.to in exports and (args.preset or args.tokenizer or args.sliding_window):
        raise CLIError(f"--preset, --tokenizer and --sliding-window apply to conversions into keras_siglip, not "
                       f"--to {args.to} (the preset carries its own architecture and tokenizer)")
    with contextlib.redirect_stdout(sys.stderr):  # progress bars and notes: not results
        if args.to in exports:
            destination = exports[args.to](args.source, args.destination, overwrite=args.overwrite)
        else:
            destination = convert.convert(
                args.source, args.destination, config=args.preset, tokenizer=args.tokenizer,
                overwrite=args.overwrite, sliding_window="config" if args.sliding_window == "config" else None,
            )
    print(f"Wrote {destination}")


def cmd_export(args):
    from keras_siglip import export
    from keras_siglip.convert import _preset_preprocessor
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
    from keras_siglip.utils.preset import preset_loader

    export.check_destination(args.out, args.overwrite)  # before loading anything
    preset, _, backbone_cls = preset_loader(args.preset)
    if not issubclass(backbone_cls, SigLIPBackbone):
        raise CLIError(f"{args.preset} holds a {backbone_cls.__name__}; export takes SigLIP / SigLIP 2 two-tower "
                       "models (image and text encoders).")
    backbone = SigLIPBackbone.from_preset(preset)
    model_input = getattr(backbone.vision_encoder, "input_format", "images")
    if args.input is not None and args.input != model_input and "image" in args.towers:
        kind = {"images": "a fixed-resolution", "naflex": "a NaFlex", "packed": "a sequence-packing"}[model_input]
        raise CLIError(f"{args.preset} is {kind} model (input {model_input!r}); --input {args.input} needs a "
                       f"model trained for it.")
    with contextlib.redirect_stdout(sys.stderr):
        out = export.export(backbone, args.out, args.format, args.towers,
                            _preset_preprocessor(preset, SigLIPPreprocessor), args.max_num_patches,
                            quantize=args.quantize, overwrite=args.overwrite)
    print(f"Wrote {out}")


def _towers(text):
    from keras_siglip.export import TOWERS

    towers = tuple(t.strip() for t in text.split(","))
    if not all(towers) or any(t not in TOWERS for t in towers) or len(set(towers)) != len(towers):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {' and '.join(TOWERS)}; got {text!r}")
    return towers


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _label(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("a label must not be empty")
    return text


def _template(text):
    if text.count("{}") != 1:
        raise argparse.ArgumentTypeError(f"a template needs exactly one '{{}}' for the label; got {text!r}")
    return text


def _similarity(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity threshold lies in (0, 1]; got {value}")
    return value


def _npy_path(text):
    if not text.endswith(".npy"):
        raise argparse.ArgumentTypeError(f"the file is written in NumPy's .npy format; name it *.npy, got {text!r}")
    return text


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and the frameworks' start-up logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list presets")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show each card's sources, weight size and local cache")
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("zero-shot", help="rank labels for images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True, type=_label)
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--templates", nargs="+", default=["a photo of {}"], type=_template,
                   help="prompt templates, each with one {} for the label (default: 'a photo of {}')")
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels shown per image (default 5)")
    p.set_defaults(run=cmd_zero_shot)

    p = sub.add_parser("embed", help="write image or text embeddings to .npy")
    parser.embed_parser = p
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--texts", nargs="+")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--out", required=True, type=_npy_path, metavar="FILE.npy",
                   help="the .npy file to write (exactly this path; replaced atomically)")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser(
        "convert", help="big_vision .npz | Hugging Face folder | keras-hub preset -> keras_siglip preset "
                        "(SigLIP, PaliGemma 1/2, CapPa; the model is read from the checkpoint); with --to, "
                        "a SigLIP or PaliGemma preset of ours -> Hugging Face or keras-hub"
    )
    p.add_argument("source", help="a big_vision .npz (SigLIP, PaliGemma or CapPa), an HF SigLIP or "
                                  "PaliGemma folder, a keras-hub preset folder (or a preset of ours with "
                                  "--to huggingface | keras-hub)")
    p.add_argument("destination", help="the folder to write; must not exist, or be a converted model "
                                       "folder with --overwrite (then replaced whole, atomically)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing destination that holds a converted model")
    p.add_argument("--preset", default=None,
                   help="big_vision only: the published preset name whose architecture the .npz holds "
                        "(else inferred from the shapes); for PaliGemma it also sets the Gemma 2 soft caps")
    p.add_argument("--tokenizer", default=None, metavar="SPM",
                   help="a SentencePiece model to bundle when the source has none (big_vision .npz)")
    p.add_argument("--sliding-window", choices=("none", "config"), default=None,
                   help="a Hugging Face PaliGemma 2 folder: none (default) attends globally in every layer, as "
                        "big_vision trained it and the cards are; config keeps the folder's 4096-token window "
                        "on even layers, which transformers runs (they differ past 4096 positions: 896 px)")
    p.add_argument("--to", choices=("keras_siglip", "huggingface", "keras-hub"), default="keras_siglip",
                   help="huggingface: export a keras_siglip SigLIP / PaliGemma preset to a transformers folder; "
                        "keras-hub: to a preset folder keras-hub's own from_preset loads")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser(
        "export", help="a SigLIP preset's towers -> TensorFlow SavedModel, LiteRT (.tflite) or ONNX files",
        description="Export a SigLIP / SigLIP 2 preset's image and text towers (preprocessed inputs -> "
                    "L2-normalised embeddings, dynamic batch) with export.json and the tokenizer. Exports run "
                    "on TensorFlow whatever KERAS_BACKEND says: the weights are the same on every backend.",
    )
    p.add_argument("preset", help="a preset name, folder or URI, or a checkpoint convert takes")
    p.add_argument("out", help="the folder to write (must not exist, or be an export with --overwrite)")
    p.add_argument("--format", required=True, choices=("saved_model", "litert", "onnx"))
    p.add_argument("--towers", type=_towers, default=("image", "text"), metavar="image,text",
                   help="which towers to export (default both)")
    p.add_argument("--input", choices=("images", "naflex"), default=None,
                   help="the image tower's inputs: images (fixed resolution) or naflex (patches, mask, "
                        "coordinates); default and required: the model's own")
    p.add_argument("--max-num-patches", type=_positive_int, default=None, metavar="N",
                   help="NaFlex: patches per image in the export (default: the preset's preprocessor's)")
    p.add_argument("--quantize", choices=("int8", "int4", "float8"), default=None,
                   help="quantize the float model: saved_model takes int8, int4, float8; onnx int8, int4 "
                        "(Keras' quantized layers); litert int8 (the TF Lite converter's dynamic-range int8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export whole")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("demo", help="zero-shot on held-out shapes images, with a picture")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--num-images", type=_positive_int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="keras_siglip_demo.png")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("index", help="embed every image under a folder into an index (only new or changed "
                                     "files on later runs)")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("-o", "--out", default=None, metavar="INDEX",
                   help="the index file (default: DIR/.keras_siglip_index.sqlite)")
    p.add_argument("--preset", default=None,
                   help=f"a SigLIP preset (default: the index's own, or {DEFAULT_PRESET} for a new index)")
    p.add_argument("--naflex", type=_positive_int, default=None, metavar="N",
                   help="NaFlex presets: patches per image (default: the preset's)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(run=cmd_index)

    p = sub.add_parser("search", help="rank an index's images by a text (sigmoid probability) or an image "
                                      "(cosine similarity)")
    p.add_argument("index", metavar="INDEX_OR_DIR", help="an index file, or a folder with its default index")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", type=_label)
    p.add_argument("--image", default=None, metavar="QUERY", help="an image file to search by instead of a text")
    p.add_argument("-k", type=_positive_int, default=20, help="results shown (default 20)")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("dedup", help="list groups of near-duplicate images in an index")
    p.add_argument("index", metavar="INDEX_OR_DIR", help="an index file, or a folder with its default index")
    p.add_argument("--threshold", type=_similarity, default=0.95,
                   help="cosine similarity that makes two images near duplicates (default 0.95)")
    p.set_defaults(run=cmd_dedup)

    p = sub.add_parser("eval", help="zero-shot accuracy on class folders, retrieval recall on COCO captions")
    evals = p.add_subparsers(dest="evaluation", required=True)
    e = evals.add_parser("zero-shot", help="top-1 / top-5 on an ImageFolder layout (DIR/CLASS/IMAGE)")
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--class-names", default=None, metavar="FILE",
                   help="class names: JSON {folder: name}, or one per line in sorted folder order "
                        "(default: the folder names)")
    e.add_argument("--templates", nargs="+", default=["clip_paper"], metavar="T",
                   help="a template set (clip_paper: the CLIP paper's 80 and the bare name, as big_vision; "
                        "clip_best; class_name_only) or templates with one {} each")
    e.set_defaults(run=cmd_eval_zero_shot)
    r = evals.add_parser("retrieval", help="Recall@1/5/10 both ways on a COCO captions layout")
    r.add_argument("--images", required=True, metavar="DIR", help="the folder the file names are relative to")
    r.add_argument("--captions", required=True, metavar="FILE", help="COCO captions JSON (images, annotations)")
    r.set_defaults(run=cmd_eval_retrieval)
    p = sub.add_parser("serve", help="a local web app: zero-shot labels and index search (SigLIP presets), "
                                     "captions and boxes (CapPa, LocCa, LiT-decoder, PaliGemma presets); needs "
                                     "keras-siglip[serve]")
    p.add_argument("--preset", default=None, help=f"default: the index's, or {DEFAULT_PRESET}; a captioner or "
                                                  "PaliGemma preset captions and detects instead")
    p.add_argument("--index", default=None, metavar="INDEX_OR_DIR", help="an index (see `index`) to search")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                                                       "machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.set_defaults(run=cmd_serve)

    for evaluation in (e, r):
        evaluation.add_argument("--preset", default=DEFAULT_PRESET)
        evaluation.add_argument("--naflex", type=_positive_int, default=None, metavar="N",
                                help="NaFlex presets: patches per image (default: the preset's)")
        evaluation.add_argument("--batch-size", type=_positive_int, default=32)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits with 2
    args.own_process = argv is None  # run as the `keras-siglip` program, not called from Python
    if args.command == "embed" and bool(args.images) == bool(args.texts):
        parser.embed_parser.error("give either IMAGE files or --texts (one of the two)")
    if args.command == "export" and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"  # the exporters' backend (see `keras_siglip.export`)
    try:
        with (contextlib.nullcontext() if args.debug else _quiet_native_logs()):
            args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `keras-siglip presets | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as error:  # noqa: BLE001 - the one place errors become messages
        if args.debug:
            raise
        print(f"{PROG}: error: {_message(error)}", file=sys.stderr)
        return 1
    return 0


# Module -> (framework, what installs it). JAX and TensorFlow come with the package.
_FRAMEWORKS = {"torch": ("PyTorch", '"keras-siglip[torch]"'), "jax": ("JAX", '"jax[cpu]"'),
               "jaxlib": ("JAX", '"jax[cpu]"'), "tensorflow": ("TensorFlow", "tensorflow")}


def _message(error):
    """One line for an expected failure; a pointer to --debug for a bug."""
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    if missing in _FRAMEWORKS:
        framework, package = _FRAMEWORKS[missing]
        backend = os.environ.get("KERAS_BACKEND", "jax")
        return (f"KERAS_BACKEND={backend} needs {framework}, which is not installed: pip install {package} "
                "(or choose another backend with KERAS_BACKEND)")
    if isinstance(error, _expected_errors()):
        text = str(error) or type(error).__name__
        if isinstance(error, OSError) and error.filename and error.strerror:
            text = f"{error.strerror}: {error.filename}"
        return text.strip()
    return f"internal error ({type(error).__name__}: {error}); rerun with --debug for the traceback"


if __name__ == "__main__":
    sys.exit(main())
