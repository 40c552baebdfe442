"""Checkpoints from big_vision, Hugging Face and keras-hub in; keras_siglip presets out.

    from keras_siglip import convert
    convert.convert("siglip2_b16_naflex.npz", "presets/b16_naflex")   # big_vision
    convert.convert("hf_folder/", "presets/b16")                       # transformers
    convert.convert("kaggle_download/", "presets/b16_kh")              # keras-hub
    backbone = SigLIPBackbone.from_preset("hf_folder/")   # converts on the fly (cached)

and back out: `write_huggingface(backbone, folder)` (transformers loads it),
`write_big_vision(backbone, "params.npz")`.

Every reader streams tensors one at a time into the model (`common.load_into`)
and lists every missing, unexpected and mis-shaped name in one error; nothing
is unpickled (npz with `allow_pickle=False`, safetensors, Keras safe mode).
"""

import hashlib
import json
import os

from keras_siglip.convert.big_vision import read_big_vision, write_big_vision
from keras_siglip.convert.common import Checkpoint, CheckpointMismatch, build_backbone, load_into
from keras_siglip.convert.huggingface import read_huggingface, write_huggingface
from keras_siglip.convert.keras_hub import assign_weights, keras_hub_weights, read_keras_hub
from keras_siglip.convert.pali_gemma import load_pali_gemma, read_pali_gemma

FORMATS = ("big_vision", "huggingface", "keras_hub", "keras_siglip")


def detect_format(source):
    """`"big_vision"` (.npz), `"huggingface"`, `"keras_hub"` or `"keras_siglip"` (a
    preset folder of ours); raises a clear error for anything else."""
    source = os.fspath(source)
    if os.path.isfile(source):
        if source.endswith(".npz"):
            return "big_vision"
        raise ValueError(f"{source} is a file but not a big_vision .npz; give an .npz or a folder.")
    if not os.path.isdir(source):
        raise FileNotFoundError(f"No checkpoint at {source}.")
    config_path = os.path.join(source, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{source} has no config.json: not a Hugging Face, keras-hub or keras_siglip folder.")
    with open(config_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if config.get("model_type") in ("siglip", "siglip2"):
        return "huggingface"
    registered = str(config.get("registered_name", ""))
    if registered.startswith("keras_hub>"):
        return "keras_hub"
    if registered.startswith("keras_siglip>"):
        return "keras_siglip"
    raise ValueError(
        f"{config_path} describes neither a Hugging Face SigLIP (model_type "
        f"{config.get('model_type')!r}) nor a keras-hub / keras_siglip preset "
        f"(registered_name {config.get('registered_name')!r})."
    )


def read_checkpoint(source, config=None, progress=True):
    """Open any supported source as a `Checkpoint` (tensors are read lazily)."""
    kind = detect_format(source)
    if kind == "big_vision":
        return read_big_vision(source, config=config, progress=progress)
    if config is not None:
        raise ValueError(f"`config` applies to big_vision checkpoints; {source} is a {kind} folder.")
    if kind == "huggingface":
        return read_huggingface(source, progress=progress)
    if kind == "keras_hub":
        return read_keras_hub(source, progress=progress)
    raise ValueError(f"{source} is already a keras_siglip preset; load it with from_preset.")


def convert(source, destination, config=None, tokenizer=None, progress=True):
    """Convert a checkpoint into a keras_siglip preset folder, written atomically.

    Args:
        source: a big_vision `.npz`, a Hugging Face folder or a keras-hub preset folder.
        destination: the preset folder to write (replaced whole on success only).
        config: big_vision only: a published preset name or a card config dict
            giving (or checking) the architecture.
        tokenizer: a SentencePiece model file to bundle when the source has
            none (big_vision files): the T5 / mT5 / Gemma model of the vocabulary.

    Returns:
        The destination path. The preset holds the backbone and, when the source
        has a tokenizer, a `SigLIPPreprocessor`.
    """
    checkpoint = read_checkpoint(source, config=config, progress=progress)
    if tokenizer is not None:
        with open(tokenizer, "rb") as f:
            vocabulary = checkpoint.config["text_encoder"]["vocabulary_size"]
            checkpoint.tokenizer = {"proto": f.read(), "pad_token": "<pad>" if vocabulary == 256_000 else "</s>"}
    backbone = load_into(build_backbone(checkpoint.config), checkpoint, progress=progress)
    write_preset(backbone, checkpoint, destination)
    return os.fspath(destination)


def write_preset(backbone, checkpoint, destination):
    """Save `backbone` (and a preprocessor from the checkpoint's tokenizer and
    image preprocessing) as one preset folder, atomically."""
    from keras_siglip.utils.preset import atomic_directory

    preprocessor = make_preprocessor(checkpoint, backbone)
    with atomic_directory(destination) as tmp:
        backbone.save_to_preset(tmp)
        if preprocessor is not None:
            preprocessor.save_to_preset(tmp)


def make_preprocessor(checkpoint, backbone):
    """The `SigLIPPreprocessor` a checkpoint implies, or None without a tokenizer."""
    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models import SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer

    if checkpoint.tokenizer is None:
        return None
    tokenizer = SigLIPTokenizer(**checkpoint.tokenizer)
    image_converter = None
    if checkpoint.image_converter is not None:
        name, kwargs = checkpoint.image_converter
        classes = {"SigLIPImageConverter": SigLIPImageConverter, "NaFlexImageConverter": NaFlexImageConverter}
        image_converter = classes[name](**kwargs)
    return SigLIPPreprocessor(
        tokenizer, image_converter, sequence_length=backbone.text_encoder.sequence_length
    )


def cache_dir():
    """Where converted sources are kept (`$KERAS_SIGLIP_CACHE`, else ~/.cache/keras_siglip)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "keras_siglip")
    return os.environ.get("KERAS_SIGLIP_CACHE", default)


def resolve_preset(preset):
    """`preset` itself when it is ours (or a name / URI keras-hub resolves); the
    path of a cached conversion when it is a big_vision, Hugging Face or keras-hub
    checkpoint. `hf://` and `kaggle://` URIs are downloaded first."""
    if not isinstance(preset, (str, os.PathLike)):
        return preset
    preset = os.fspath(preset)
    if preset.startswith(("hf://", "kaggle://")):
        local = _download(preset)
        if local is None:
            return preset  # a preset in our own format: keras-hub's loader reads it
        preset = local
    elif not os.path.exists(preset):
        return preset  # a name: left to the preset registry
    if detect_format(preset) == "keras_siglip":
        return preset
    stat = os.stat(preset)
    key = hashlib.sha256(f"{os.path.abspath(preset)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "converted", f"{os.path.basename(preset.rstrip('/'))}-{key}")
    if not os.path.exists(os.path.join(target, "config.json")):
        print(f"Converting {preset} -> {target}")
        convert(preset, target)
    return target


_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "spiece.model", "tokenizer.model",
             "preprocessor_config.json", "tokenizer_config.json")
_KERAS_HUB_FILES = ("model.weights.h5", "metadata.json", "tokenizer.json", "image_converter.json",
                    "preprocessor.json", "assets/tokenizer/vocabulary.spm")


def _download(uri):
    """Fetch a hub checkpoint that is not in our format into a local folder."""
    from keras_hub.src.utils.preset_utils import check_file_exists, get_file

    config_path = get_file(uri, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    registered = str(config.get("registered_name", ""))
    if registered.startswith("keras_siglip>"):
        return None
    names = _KERAS_HUB_FILES if registered.startswith("keras_hub>") else _HF_FILES
    files = [name for name in names if check_file_exists(uri, name)]
    if "model.safetensors.index.json" in files:
        with open(get_file(uri, "model.safetensors.index.json")) as f:
            files += sorted(set(json.load(f)["weight_map"].values()))
    for name in files:
        get_file(uri, name)
    return os.path.dirname(config_path)


__all__ = [
    "Checkpoint", "CheckpointMismatch", "FORMATS", "assign_weights", "build_backbone", "cache_dir",
    "convert", "detect_format", "keras_hub_weights", "load_into", "make_preprocessor",
    "read_big_vision", "read_checkpoint", "read_huggingface", "read_keras_hub", "resolve_preset",
    "write_big_vision", "write_huggingface", "write_preset",
]
