"""Checkpoints from big_vision, Hugging Face and keras-hub in; keras_siglip presets out.

    from keras_siglip import convert
    convert.convert("siglip2_b16_naflex.npz", "presets/b16_naflex")   # big_vision
    convert.convert("hf_folder/", "presets/b16")                       # transformers
    convert.convert("kaggle_download/", "presets/b16_kh")              # keras-hub
    convert.convert("paligemma_folder/", "presets/pg")                 # HF PaliGemma 1 / 2 (+ tokenizer)
    convert.convert("pt_224.npz", "presets/pg224")                     # big_vision PaliGemma
    backbone = SigLIPBackbone.from_preset("hf_folder/")   # converts on the fly (cached)

and back out: `write_huggingface(backbone, folder)` (transformers loads it),
`write_big_vision(backbone, "params.npz")`; a whole preset (with its
tokenizer and preprocessing) with `export_huggingface(src, dst)` (SigLIP and
PaliGemma 1 / 2 for transformers) and `export_keras_hub(src, dst)` (a
keras-hub preset folder that keras-hub's own `from_preset` loads).

Every reader streams tensors one at a time into the model (`common.load_into`)
and lists every missing, unexpected and mis-shaped name in one error; nothing
is unpickled (npz with `allow_pickle=False`, safetensors, Keras safe mode).
"""

import hashlib
import json
import os

from keras_siglip.convert import big_vision as _big_vision
from keras_siglip.convert.big_vision import read_big_vision, write_big_vision
from keras_siglip.convert.common import (
    Checkpoint, CheckpointMismatch, CorruptCheckpoint, NonFiniteWeights, build_backbone, load_into,
)
from keras_siglip.convert.huggingface import read_huggingface, write_huggingface
from keras_siglip.hub import cache_dir
from keras_siglip.utils.memory import weights_to_be_loaded
from keras_siglip.convert.keras_hub import assign_weights, keras_hub_weights, read_keras_hub
from keras_siglip.convert.keras_hub_pali_gemma import (
    is_keras_hub_pali_gemma, load_keras_hub_pali_gemma, read_keras_hub_pali_gemma,
)
from keras_siglip.convert.cappa import read_cappa
from keras_siglip.convert.pali_gemma import (
    load_pali_gemma, load_pali_gemma_big_vision, read_pali_gemma, read_pali_gemma_big_vision,
    write_pali_gemma_big_vision,
)

FORMATS = ("big_vision", "huggingface", "keras_hub", "keras_siglip")
# What a checkpoint holds (`detect_model`): the backbone it converts to.
MODELS = ("siglip", "pali_gemma", "cappa")
_HF_MODEL_TYPES = {"siglip": "siglip", "siglip2": "siglip", "paligemma": "pali_gemma"}


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
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if config.get("model_type") in _HF_MODEL_TYPES:
        return "huggingface"
    registered = str(config.get("registered_name", ""))
    if registered.startswith("keras_hub>"):
        return "keras_hub"
    if registered.startswith("keras_siglip>"):
        return "keras_siglip"
    raise ValueError(
        f"{config_path} describes neither a Hugging Face SigLIP / PaliGemma (model_type "
        f"{config.get('model_type')!r}) nor a keras-hub / keras_siglip preset "
        f"(registered_name {config.get('registered_name')!r})."
    )


def _npz_model(path):
    """The model a big_vision `.npz` holds, from its key names only (no data read)."""
    with _big_vision._load(path) as npz:
        keys = [key for key in npz.files]
    if "_vq_vae._embedding" in keys:
        raise ValueError(
            f"{path} is PaliGemma's segmentation VQ-VAE (vae-oid.npz), not a model checkpoint: load it "
            "with keras_siglip.models.pali_gemma.pali_gemma_segmentation.load_mask_decoder."
        )
    nested = any(key.startswith("params/") for key in keys)
    names = [key[len("params/"):] for key in keys if key.startswith("params/")] if nested else keys
    groups = {key.split("/", 1)[0] for key in names}
    if {"img", "llm"} <= groups:
        return "pali_gemma"
    if {"img", "txt"} <= groups:
        return "siglip"
    if {"encoder", "decoder"} <= groups and any(key.startswith("decoder/EncDecBlock") for key in names):
        return "cappa"
    raise ValueError(
        f"{path} is not a big_vision checkpoint layout keras_siglip knows: expected top-level params "
        "img/ + txt/ (SigLIP two-tower), img/ + llm/ (PaliGemma) or encoder/ + decoder/ (CapPa); "
        f"found {sorted(groups)[:8] or 'no arrays'}."
    )


def detect_model(source):
    """`"siglip"`, `"pali_gemma"` or `"cappa"`: what `source` converts to, read from
    its contents (the `.npz` key names, or `config.json`'s `model_type`); a clear
    error for a layout none of them has."""
    kind = detect_format(source)
    if kind == "big_vision":
        return _npz_model(os.fspath(source))
    if kind == "huggingface":
        with open(os.path.join(os.fspath(source), "config.json")) as f:
            return _HF_MODEL_TYPES[json.load(f).get("model_type")]
    if kind == "keras_hub":
        return "pali_gemma" if is_keras_hub_pali_gemma(source) else "siglip"
    raise ValueError(f"{source} is already a keras_siglip preset; load it with from_preset.")


def read_checkpoint(source, config=None, progress=True, sliding_window=None):
    """Open any supported source as a `Checkpoint` (tensors are read lazily).

    `config`: big_vision only: a published preset name or card config dict
    (SigLIP: `PUBLISHED_PRESETS`; PaliGemma: `PALI_GEMMA_PRESETS` or
    `PaliGemmaBackbone` kwargs, which also set the Gemma 2 soft caps).
    `sliding_window`: Hugging Face PaliGemma folders only: None (big_vision's
    global attention) or `"config"` (the folder's Gemma 2 window: exact parity
    with transformers past 4096 positions); see `read_pali_gemma`.
    """
    kind = detect_format(source)
    if sliding_window is not None and not (kind == "huggingface" and detect_model(source) == "pali_gemma"):
        raise ValueError(
            f"`sliding_window` applies to Hugging Face PaliGemma folders; {source} is a {kind} "
            f"{detect_model(source) if kind != 'keras_siglip' else 'preset'}."
        )
    if kind == "big_vision":
        model = _npz_model(os.fspath(source))
        if model == "pali_gemma":
            return read_pali_gemma_big_vision(source, config=config, progress=progress)
        if model == "cappa":
            if config is not None:
                raise ValueError(f"`config` does not apply to CapPa checkpoints ({source}); the shapes fix it.")
            return read_cappa(source, progress=progress)
        return read_big_vision(source, config=config, progress=progress)
    if config is not None:
        raise ValueError(f"`config` applies to big_vision checkpoints; {source} is a {kind} folder.")
    if kind == "huggingface":
        if detect_model(source) == "pali_gemma":
            return read_pali_gemma(source, sliding_window=sliding_window)
        return read_huggingface(source, progress=progress)
    if kind == "keras_hub":
        if is_keras_hub_pali_gemma(source):
            return read_keras_hub_pali_gemma(source)
        return read_keras_hub(source, progress=progress)
    raise ValueError(f"{source} is already a keras_siglip preset; load it with from_preset.")


def convert(source, destination, config=None, tokenizer=None, progress=True, overwrite=False, allow_nan=False,
            sliding_window=None):
    """Convert a checkpoint into a keras_siglip preset folder, written atomically.

    Args:
        source: a big_vision `.npz`, a Hugging Face folder or a keras-hub preset folder.
        destination: the preset folder to write. It must not exist (or be an
            empty folder), unless `overwrite` (see `check_destination`).
        config: big_vision only: a published preset name or a card config dict
            giving (or checking) the architecture.
        tokenizer: a SentencePiece model file to bundle when the source has
            none (big_vision SigLIP files): the T5 / mT5 / Gemma model of the
            vocabulary. PaliGemma tokenizers come from the HF folder's
            `tokenizer.model`. Checked before converting: it must load and
            fit the model's vocabulary.
        overwrite: replace an existing destination that holds a converted
            model (a folder with `config.json`), whole: none of its old files
            survive beside the new ones.
        allow_nan: convert weights holding NaN or inf; otherwise they raise
            `NonFiniteWeights` naming the tensors (nothing is written).
        sliding_window: a Hugging Face PaliGemma 2 folder only: None (the
            default: big_vision's global attention in every layer, as
            PaliGemma 2 was trained and as the cards are) or `"config"` (the
            folder's 4096-token window on the even layers: transformers'
            outputs at every length). They differ only for suffix tokens more
            than 4096 positions after a key (896 px inputs).

    Returns:
        The destination path. The preset holds the backbone (`SigLIPBackbone`,
        `PaliGemmaBackbone` or `CapPaBackbone`, as `detect_model` says) and,
        when the source has a tokenizer (or one is given), a preprocessor:
        `SigLIPPreprocessor` for SigLIP; for PaliGemma a `PaliGemmaTokenizer`
        in a `PaliGemmaCausalLMPreprocessor` (with a `PaliGemmaImageConverter`
        at the model's `image_size`), so `PaliGemmaCausalLM.from_preset`
        loads the folder whole. A PaliGemma source without a tokenizer (a
        big_vision file, an HF folder without `tokenizer.model`) gives a
        backbone-only preset (`PaliGemmaCausalLM.from_preset(dst, preprocessor=None)`).
    """
    model = detect_model(source)
    check_destination(source, destination, overwrite)
    if tokenizer is not None and model != "siglip":
        raise ValueError(
            f"{source} holds a {model} model; bundling a tokenizer is supported for SigLIP checkpoints "
            "only (a Hugging Face PaliGemma folder brings its own tokenizer.model; otherwise the preset "
            "is written with the backbone alone)."
        )
    checkpoint = read_checkpoint(source, config=config, progress=progress, sliding_window=sliding_window)
    if tokenizer is not None:
        checkpoint.tokenizer = _read_tokenizer(tokenizer, checkpoint.config["text_encoder"]["vocabulary_size"])
    try:
        with weights_to_be_loaded():  # load_into assigns every weight or raises
            backbone = _build(model, checkpoint.config)
    except ValueError as error:  # e.g. a damaged name hid the text head: name the source
        raise CheckpointMismatch(
            f"{checkpoint.source}: its tensors describe a model that cannot be built: {error}"
        ) from error
    backbone = load_into(backbone, checkpoint, progress=progress, allow_nan=allow_nan)
    write_preset(backbone, checkpoint, destination)
    return os.fspath(destination)


def check_destination(source, destination, overwrite=False):
    """Refuse a destination whose replacement would lose data.

    The destination may not be the source, lie inside it or contain it; it
    may not be a file; an existing non-empty folder is replaced only with
    `overwrite` and only when it holds a converted model (`config.json`), so
    a mistyped path never wipes an unrelated folder.
    """
    src, dst = os.path.realpath(source), os.path.realpath(destination)
    if dst == src:
        raise ValueError(f"The destination {destination} is the source itself; write the preset elsewhere.")
    if dst.startswith(src.rstrip(os.sep) + os.sep):
        raise ValueError(f"The destination {destination} lies inside the source {source}; write it elsewhere.")
    if src.startswith(dst.rstrip(os.sep) + os.sep):
        raise ValueError(f"The source {source} lies inside the destination {destination}, which would be "
                         "replaced; write the preset elsewhere.")
    if not os.path.lexists(destination):
        return
    if not os.path.isdir(destination):
        raise ValueError(f"The destination {destination} is a file; a preset is a folder. Give a new folder name.")
    if not [name for name in os.listdir(destination) if not name.startswith(".")]:
        return  # an empty folder (ours or the user's mkdir)
    if not overwrite:
        raise ValueError(f"The destination {destination} already exists; pass --overwrite (overwrite=True) "
                         "to replace it whole.")
    if not os.path.isfile(os.path.join(destination, "config.json")):
        raise ValueError(f"The destination {destination} is a non-empty folder without config.json, not a "
                         "converted model: refusing to replace it, even with --overwrite.")


def _read_tokenizer(path, vocabulary_size):
    """A SentencePiece file to bundle, checked against the model's vocabulary."""
    import sentencepiece

    with open(path, "rb") as f:
        proto = f.read()
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, TypeError, OSError) as error:
        raise ValueError(f"The tokenizer {path} is not a SentencePiece model ({error}).") from None
    if processor.GetPieceSize() > vocabulary_size:
        raise ValueError(
            f"The tokenizer {path} has {processor.GetPieceSize()} pieces but the model only "
            f"{vocabulary_size} token embeddings: they do not belong together."
        )
    return {"proto": proto, "pad_token": "<pad>" if vocabulary_size == 256_000 else "</s>"}


def export_huggingface(source, destination, overwrite=False):
    """Export a keras_siglip SigLIP or PaliGemma preset (a folder, or anything
    `from_preset` takes) to a transformers folder (`SiglipModel` / `Siglip2Model`, or `PaliGemmaForConditionalGeneration`
    with `write_pali_gemma`: model, tokenizer and `preprocessor_config.json`),
    with `convert`'s checks on the destination. Returns the destination."""
    from keras_siglip.convert.pali_gemma import write_pali_gemma
    from keras_siglip.models import PaliGemmaBackbone, SigLIPBackbone, SigLIPPreprocessor
    from keras_siglip.models.pali_gemma import PaliGemmaCausalLMPreprocessor
    from keras_siglip.utils.preset import preset_loader

    check_destination(source, destination, overwrite)
    source, _, _ = preset_loader(source)  # a name or foreign checkpoint: converted (cached) as from_preset does
    if _exported_model(source, "Hugging Face") == "pali_gemma":
        backbone_cls, preprocessor_cls, write = PaliGemmaBackbone, PaliGemmaCausalLMPreprocessor, write_pali_gemma
    else:
        backbone_cls, preprocessor_cls, write = SigLIPBackbone, SigLIPPreprocessor, write_huggingface
    preprocessor = _preset_preprocessor(source, preprocessor_cls)
    write(
        backbone_cls.from_preset(source), destination,
        tokenizer=getattr(preprocessor, "tokenizer", None),
        image_converter=getattr(preprocessor, "image_converter", None),
    )
    return os.fspath(destination)


def export_keras_hub(source, destination, overwrite=False):
    """Export a keras_siglip SigLIP or PaliGemma preset (a folder, or anything
    `from_preset` takes: foreign checkpoints are converted first, once) to a
    keras-hub preset folder that keras-hub's own
    `keras_hub.models.SigLIPBackbone.from_preset` /
    `keras_hub.models.PaliGemmaBackbone.from_preset` load, with the
    preprocessor when the preset has one (`SigLIPPreprocessor`,
    `PaliGemmaCausalLMPreprocessor`, so keras-hub's `PaliGemmaCausalLM.from_preset`
    loads it whole). `convert`'s checks on the destination; a model keras-hub
    cannot express (NaFlex inputs, pooling or heads it lacks, PaliGemma options
    it lacks) is refused with one error before anything is written
    (`keras_hub.write_keras_hub`, `keras_hub_pali_gemma.write_keras_hub_pali_gemma`).
    Returns the destination."""
    from keras_siglip.convert.keras_hub import write_keras_hub
    from keras_siglip.convert.keras_hub_pali_gemma import write_keras_hub_pali_gemma
    from keras_siglip.models import PaliGemmaBackbone, SigLIPBackbone, SigLIPPreprocessor
    from keras_siglip.models.pali_gemma import PaliGemmaCausalLMPreprocessor
    from keras_siglip.utils.preset import preset_loader

    check_destination(source, destination, overwrite)
    preset, _, _ = preset_loader(source)  # a foreign checkpoint: converted (cached) as from_preset does
    if _exported_model(preset, "keras-hub") == "pali_gemma":
        backbone = PaliGemmaBackbone.from_preset(preset)
        preprocessor = _preset_preprocessor(preset, PaliGemmaCausalLMPreprocessor)
        write_keras_hub_pali_gemma(backbone, destination, preprocessor)
    else:
        backbone = SigLIPBackbone.from_preset(preset)
        preprocessor = _preset_preprocessor(preset, SigLIPPreprocessor)
        write_keras_hub(backbone, destination, preprocessor)
    return os.fspath(destination)


_EXPORTED_MODELS = {"keras_siglip>SigLIPBackbone": "siglip", "keras_siglip>PaliGemmaBackbone": "pali_gemma"}


def _exported_model(preset, target):
    """`"siglip"` or `"pali_gemma"`: the backbone a preset of ours holds (its
    `config.json`); a clear error for any other."""
    from keras_hub.src.utils.preset_utils import load_json

    registered = load_json(os.fspath(preset), "config.json").get("registered_name")
    if registered not in _EXPORTED_MODELS:
        raise ValueError(f"{preset} holds a {registered}; the {target} export takes SigLIPBackbone and "
                         "PaliGemmaBackbone presets.")
    return _EXPORTED_MODELS[registered]


def _preset_preprocessor(preset, cls):
    """The preset's preprocessor (`preprocessor.json`), or None."""
    from keras_hub.src.utils.preset_utils import check_file_exists

    return cls.from_preset(preset) if check_file_exists(os.fspath(preset), "preprocessor.json") else None


def _build(model, config):
    if model == "pali_gemma":
        from keras_siglip.models.pali_gemma import PaliGemmaBackbone

        return PaliGemmaBackbone(**config)
    if model == "cappa":
        from keras_siglip.models import CapPaBackbone

        return CapPaBackbone(**config)
    return build_backbone(config)


def write_preset(backbone, checkpoint, destination):
    """Save `backbone` (and a preprocessor from the checkpoint's tokenizer and
    image preprocessing) as one preset folder, atomically, replacing
    `destination` whole."""
    from keras_siglip.utils.preset import atomic_directory

    from keras_siglip.models import SigLIPImageConverter
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    preprocessor = make_preprocessor(checkpoint, backbone)
    if preprocessor is None and not isinstance(backbone, PaliGemmaBackbone):
        # No tokenizer, but the source may say how to resize images: keep that
        # (`SigLIPImageConverter.from_preset(destination)` reads it back). A
        # NaFlex converter is no preset layer of its own; its patch size is the
        # backbone's and its sequence length a per-call choice.
        converter = _image_converter(checkpoint)
        preprocessor = converter if isinstance(converter, SigLIPImageConverter) else None
    with atomic_directory(destination, merge=False) as tmp:
        backbone.save_to_preset(tmp)
        if preprocessor is not None:
            preprocessor.save_to_preset(tmp)


def _image_converter(checkpoint):
    """The image converter `checkpoint.image_converter` describes, or None."""
    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models import SigLIPImageConverter

    if checkpoint.image_converter is None:
        return None
    name, kwargs = checkpoint.image_converter
    classes = {"SigLIPImageConverter": SigLIPImageConverter, "NaFlexImageConverter": NaFlexImageConverter}
    return classes[name](**kwargs)


def make_preprocessor(checkpoint, backbone):
    """The preprocessor a checkpoint implies (`SigLIPPreprocessor`, or
    `PaliGemmaCausalLMPreprocessor` for a `PaliGemmaBackbone`), or None
    without a tokenizer."""
    from keras_siglip.models import SigLIPPreprocessor, SigLIPTokenizer
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    if checkpoint.tokenizer is None:
        return None
    if isinstance(backbone, PaliGemmaBackbone):
        return _pali_gemma_preprocessor(checkpoint, backbone)
    return SigLIPPreprocessor(
        SigLIPTokenizer(**checkpoint.tokenizer), _image_converter(checkpoint),
        sequence_length=backbone.text_encoder.sequence_length,
    )


def _pali_gemma_preprocessor(checkpoint, backbone):
    """`PaliGemmaCausalLMPreprocessor` (tokenizer + image converter) of a
    PaliGemma checkpoint; a tokenizer that is not a PaliGemma vocabulary is
    reported and left out (the backbone is still written)."""
    import warnings

    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models.pali_gemma import (
        PaliGemmaCausalLMPreprocessor, PaliGemmaImageConverter, PaliGemmaTokenizer,
    )

    try:
        tokenizer = PaliGemmaTokenizer(checkpoint.tokenizer["proto"])
    except ValueError as error:
        warnings.warn(f"Writing the PaliGemma backbone without a preprocessor: its tokenizer.model is unusable: "
                      f"{error}", stacklevel=3)
        return None
    if tokenizer.vocabulary_size() > backbone.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocabulary_size()} pieces but the model only "
            f"{backbone.vocabulary_size} token embeddings: they do not belong together."
        )
    if backbone.input_format == "naflex":
        image_converter = NaFlexImageConverter(backbone.vit.patch_size, backbone.max_num_patches)
    else:
        name, kwargs = checkpoint.image_converter or ("PaliGemmaImageConverter", {})
        kwargs = {"image_size": (backbone.image_size, backbone.image_size), **kwargs}
        image_converter = PaliGemmaImageConverter(**kwargs)
    return PaliGemmaCausalLMPreprocessor(tokenizer, image_converter)


def resolve_preset(preset, allow_nan=False):
    """`preset` itself when it is ours (or a name / URI keras-hub resolves); the
    path of a cached conversion when it is a big_vision, Hugging Face or keras-hub
    checkpoint (`allow_nan`: see `convert`). `hf://` and `kaggle://` URIs are
    downloaded first; a published card's name is fetched from its sources and
    converted once (`keras_siglip.hub.fetch_preset`)."""
    if not isinstance(preset, (str, os.PathLike)):
        return preset
    preset = os.fspath(preset)
    if preset.startswith(("hf://", "kaggle://")):
        local = _download(preset)
        if local is None:
            return preset  # a preset in our own format: keras-hub's loader reads it
        preset = local
    elif not os.path.exists(preset):
        from keras_siglip import hub

        if hub.published_card(preset) is not None:
            return hub.fetch_preset(preset, allow_nan=allow_nan)
        return preset  # a name: left to the preset registry
    if detect_format(preset) == "keras_siglip":
        return preset
    stat = os.stat(preset)
    key = hashlib.sha256(f"{os.path.abspath(preset)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "converted", f"{os.path.basename(preset.rstrip('/'))}-{key}")
    if not os.path.exists(os.path.join(target, "config.json")):
        print(f"Converting {preset} -> {target}")
        convert(preset, target, allow_nan=allow_nan)
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
    "Checkpoint", "CheckpointMismatch", "CorruptCheckpoint", "NonFiniteWeights", "FORMATS", "MODELS", "assign_weights", "build_backbone", "cache_dir",
    "check_destination", "convert", "detect_format", "export_huggingface", "export_keras_hub", "detect_model", "keras_hub_weights", "load_into", "load_pali_gemma",
    "load_keras_hub_pali_gemma", "load_pali_gemma_big_vision", "make_preprocessor", "read_big_vision", "read_cappa", "read_checkpoint", "read_keras_hub_pali_gemma",
    "read_huggingface", "read_keras_hub", "read_pali_gemma", "read_pali_gemma_big_vision", "resolve_preset",
    "write_big_vision", "write_huggingface", "write_pali_gemma_big_vision", "write_preset",
]
