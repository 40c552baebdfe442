"""Deployable SigLIP towers: TensorFlow SavedModel, LiteRT and ONNX.

    from keras_siglip.export import export_preset, ExportedTowers

    export_preset("siglip2_shapes_tiny", "tiny_onnx", format="onnx")
    towers = ExportedTowers("tiny_onnx")              # runs in onnxruntime
    towers.encode_images(images)                      # (B, D), L2-normalised
    towers.encode_texts(token_ids)                    # (B, D)

An export is a folder:

    image_encoder.onnx | image_encoder.tflite | image_encoder/ (SavedModel)
    text_encoder.onnx  | ...
    export.json        format, each tower's inputs and outputs, preprocessing
    tokenizer.model    the SentencePiece model (when the preset has one)

Each tower maps preprocessed inputs to L2-normalised embeddings, the batch
dimension dynamic:

- image, fixed resolution: `images (B, H, W, 3)` float32 in [-1, 1] at the
  preset's size;
- image, NaFlex: `patches (B, N, P*P*3)` float32, `patch_mask (B, N)` int32,
  `patch_coords (B, N, 2)` int32 (`SigLIPPreprocessor` / `NaFlexImageConverter`
  make them; `N` is `max_num_patches`, fixed in the export). The position grid
  is resized per image by matmuls with interpolation weights computed from the
  coordinates, so NaFlex exports where an antialiased image resize would not;
- text: `token_ids (B, L)` int32 (tokenised, padded to the preset's length).

Every format is written through TensorFlow's graph (Keras' `model.export`:
`tf.saved_model`, the TF Lite converter, tf2onnx), the one exporter that
produces all three soundly. On another backend `export` saves the model and
runs the export in a TensorFlow-backend subprocess: the weights, hence the
artifact, are the same on every backend. A quantized model (`model.quantize`)
exports with its integer kernels.
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings

FORMATS = {  # ours -> (Keras' name, file suffix; "" is a SavedModel folder)
    "saved_model": ("tf_saved_model", ""),
    "litert": ("litert", ".tflite"),
    "onnx": ("onnx", ".onnx"),
}
TOWERS = ("image", "text")
# format -> quantization modes it exports. SavedModel and ONNX run Keras'
# quantized layers (`model.quantize`); TF Lite has no kernel for their int8
# matmuls, so LiteRT's int8 is the converter's own dynamic-range quantization
# of the float model (int8 weights per channel, activations quantized on the fly).
QUANTIZATION = {"saved_model": ("int8", "int4", "float8"), "onnx": ("int8", "int4"), "litert": ("int8",)}
MANIFEST = "export.json"
TOKENIZER_FILE = "tokenizer.model"


def tower_models(backbone, towers=TOWERS, max_num_patches=None):
    """`{"image": keras.Model, "text": keras.Model}`: each tower alone, from
    its preprocessed inputs to L2-normalised embeddings (the backbone's own
    layers and weights, quantized ones included)."""
    import keras

    _check_towers(towers)
    models = {}
    if "image" in towers:
        vision = backbone.vision_encoder
        input_format = getattr(vision, "input_format", "images")
        if input_format == "images":
            inputs = {"images": keras.Input((*vision.image_size, vision.num_channels), name="images")}
            features = vision(inputs["images"])
        elif input_format == "naflex":
            patch_dim = vision.patch_size * vision.patch_size * vision.num_channels
            inputs = {
                "patches": keras.Input((max_num_patches, patch_dim), name="patches"),
                "patch_mask": keras.Input((max_num_patches,), dtype="int32", name="patch_mask"),
                "patch_coords": keras.Input((max_num_patches, 2), dtype="int32", name="patch_coords"),
            }
            features = vision(inputs)
        else:
            raise ValueError(f"An image tower with input_format={input_format!r} (sequence packing is for "
                             "training) does not export; export a fixed-resolution or NaFlex model.")
        models["image"] = keras.Model(inputs, backbone.normalize(features), name="image_encoder")
    if "text" in towers:
        text = backbone.text_encoder
        token_ids = keras.Input((text.sequence_length,), dtype="int32", name="token_ids")
        models["text"] = keras.Model({"token_ids": token_ids}, backbone.normalize(text(token_ids)),
                                     name="text_encoder")
    return models


def export(backbone, path, format="saved_model", towers=TOWERS, preprocessor=None, max_num_patches=None,
           quantize=None, overwrite=False, verbose=True):
    """Export a `SigLIPBackbone`'s towers to the folder `path` (written
    atomically: an interrupted export leaves no half folder, and an existing
    export is replaced whole only with `overwrite`). `preprocessor` (a
    `SigLIPPreprocessor`) adds its tokenizer file and its preprocessing to the
    manifest, and gives a NaFlex model its `max_num_patches`. `quantize`
    ("int8", "int4", "float8"; see `QUANTIZATION` for which format takes
    which) quantizes a float model on the way; a model already quantized with
    `model.quantize` exports as it is. Returns `path`."""
    import keras

    format, towers = _check_format(format), _check_towers(towers)
    if format == "onnx":
        _require(("tf2onnx", "onnx"), "exporting to ONNX")
    check_destination(path, overwrite)
    max_num_patches = _max_num_patches(backbone, preprocessor, max_num_patches, towers)
    mode = _quantization_mode(backbone, format, quantize)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow(backbone, preprocessor, path, format, towers, max_num_patches, quantize,
                                     overwrite, verbose)
    from keras_siglip.utils.atomic import atomic_directory

    options = {}
    if quantize is not None and format == "litert":
        import tensorflow as tf

        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    elif quantize is not None:
        float_model = backbone
        backbone = backbone.__class__.from_config(float_model.get_config())
        backbone.set_weights(float_model.get_weights())
        backbone.quantize(quantize)
    models = tower_models(backbone, towers, max_num_patches)
    with atomic_directory(path, merge=False) as tmp:
        manifest = {"format": format, "quantization": mode, "towers": {}}
        for name, model in models.items():
            if verbose:
                print(f"Exporting the {name} tower to {format} ...", file=sys.stderr, flush=True)
            keras_format, suffix = FORMATS[format]
            file = f"{model.name}{suffix}"
            with warnings.catch_warnings():  # tf2onnx's probe of NumPy 2's removed `np.object`
                warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
                model.export(os.path.join(tmp, file), format=keras_format, verbose=False,
                             input_signature=[_signature(model)], **options)
            manifest["towers"][name] = {
                "file": file,
                "inputs": {k: {"shape": list(t.shape), "dtype": t.dtype} for k, t in _signature(model).items()},
                "output": {"name": f"{name}_embeddings", "shape": list(model.output.shape),
                           "dtype": model.output.dtype, "l2_normalized": True},
            }
        if preprocessor is not None:
            manifest["preprocessor"] = _preprocessing(preprocessor, tmp, towers)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=2)
    return os.fspath(path)


def export_preset(preset, path, format="saved_model", towers=TOWERS, max_num_patches=None, quantize=None,
                  overwrite=False, verbose=True):
    """`export` of a preset (a name, folder, URI or foreign checkpoint, as
    `from_preset` takes), with its preprocessor when it has one."""
    from keras_siglip.convert import _preset_preprocessor
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
    from keras_siglip.utils.preset import preset_loader

    format, towers = _check_format(format), _check_towers(towers)
    check_destination(path, overwrite)
    preset, _, backbone_cls = preset_loader(preset)
    if not issubclass(backbone_cls, SigLIPBackbone):
        raise ValueError(f"The preset {preset} holds a {backbone_cls.__name__}; export takes SigLIP / SigLIP 2 "
                         "two-tower models (image and text encoders).")
    return export(SigLIPBackbone.from_preset(preset), path, format, towers,
                  _preset_preprocessor(preset, SigLIPPreprocessor), max_num_patches, quantize, overwrite, verbose)


def check_destination(path, overwrite=False):
    """Refuse a destination whose replacement would lose data: a file, or a
    non-empty folder unless `overwrite` and it holds an export (`export.json`)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"Cannot write {path}: the folder {os.path.dirname(os.path.abspath(path))} "
                             "does not exist.")
        return
    if not os.path.isdir(path):
        raise ValueError(f"The destination {path} is a file; an export is a folder. Give a new folder name.")
    if not [name for name in os.listdir(path) if not name.startswith(".")]:
        return
    if not overwrite:
        raise ValueError(f"The destination {path} already exists; pass --overwrite (overwrite=True) to replace "
                         "it whole.")
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        raise ValueError(f"The destination {path} is a non-empty folder without {MANIFEST}, not an export: "
                         "refusing to replace it, even with --overwrite.")


class ExportedTowers:
    """An export folder run in its format's own runtime: `tf.saved_model`,
    the LiteRT interpreter (`ai_edge_litert`) or onnxruntime.

    `encode_images(images)` takes the image tower's inputs (an array for a
    fixed-resolution tower, the NaFlex dict otherwise); `encode_texts(token_ids)`
    the text tower's. Both return `(B, D)` float32 NumPy embeddings."""

    def __init__(self, path):
        self.path = os.fspath(path)
        manifest = os.path.join(self.path, MANIFEST)
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"{self.path} is not an export: {MANIFEST} is missing.")
        with open(manifest, encoding="utf-8") as file:
            self.manifest = json.load(file)
        self.format = self.manifest["format"]
        self._runners = {}

    def encode_images(self, images):
        return self._run("image", images if isinstance(images, dict) else {"images": images})

    def encode_texts(self, token_ids):
        return self._run("text", {"token_ids": token_ids})

    def _run(self, tower, inputs):
        import numpy as np

        spec = self.manifest["towers"].get(tower)
        if spec is None:
            raise ValueError(f"The export {self.path} has no {tower} tower (it has: "
                             f"{', '.join(self.manifest['towers'])}).")
        if set(inputs) != set(spec["inputs"]):
            raise ValueError(f"The {tower} tower takes {sorted(spec['inputs'])}; got {sorted(inputs)}.")
        arrays = {}
        for name, want in spec["inputs"].items():
            array = np.asarray(inputs[name], dtype=want["dtype"])
            if array.ndim != len(want["shape"]) or any(
                    w is not None and w != g for w, g in zip(want["shape"], array.shape)):
                raise ValueError(f"{tower} tower input {name!r}: expected shape {_shape(want['shape'])}, got "
                                 f"{array.shape}.")
            arrays[name] = array
        if tower not in self._runners:
            self._runners[tower] = getattr(self, f"_load_{self.format}")(os.path.join(self.path, spec["file"]))
        return np.asarray(self._runners[tower](arrays), dtype="float32")

    @staticmethod
    def _load_saved_model(path):
        _require(("tensorflow",), "running a SavedModel")
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        return lambda arrays: loaded.serve(arrays).numpy()  # the closure keeps `loaded` (and its variables)

    @staticmethod
    def _load_onnx(path):
        _require(("onnxruntime",), "running an ONNX export")
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = {i.name.split(":")[0]: i.name for i in session.get_inputs()}
        return lambda arrays: session.run(None, {names[k]: v for k, v in arrays.items()})[0]

    @staticmethod
    def _load_litert(path):
        _require(("ai_edge_litert",), "running a LiteRT export")
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        runner = interpreter.get_signature_runner()
        names = {name.split(":")[0]: name for name in runner.get_input_details()}

        def run(arrays):
            outputs = runner(**{names.get(k, k): v for k, v in arrays.items()})
            return next(iter(outputs.values()))

        return run


def _require(modules, purpose):
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{purpose[0].upper()}{purpose[1:]} needs {', '.join(missing)}, which is not installed: "
                          "pip install 'keras-siglip[export]'.")


def _signature(model):
    """A tower's inputs: `{name: KerasTensor}` (every tower takes a dict)."""
    return dict(model.input)


def _shape(shape):
    return "(" + ", ".join("B" if d is None else str(d) for d in shape) + ")"


def _check_format(format):
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    return format


def _check_towers(towers):
    towers = (towers,) if isinstance(towers, str) else tuple(towers)
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers or len(set(towers)) != len(towers):
        raise ValueError(f"towers must be distinct names among {', '.join(TOWERS)}; got {', '.join(towers) or 'none'}.")
    return towers


def _max_num_patches(backbone, preprocessor, max_num_patches, towers):
    naflex = "image" in towers and getattr(backbone.vision_encoder, "input_format", "images") == "naflex"
    if max_num_patches is not None and not naflex:
        raise ValueError("max_num_patches (--max-num-patches) applies to a NaFlex image tower; this export has "
                         "none (a fixed-resolution model exports at its own image size).")
    if naflex and max_num_patches is None:
        converter = getattr(preprocessor, "image_converter", None)
        max_num_patches = getattr(converter, "max_num_patches", None)
    if max_num_patches is not None and (not isinstance(max_num_patches, int) or max_num_patches < 1):
        raise ValueError(f"max_num_patches must be a positive integer; got {max_num_patches!r}.")
    if naflex and max_num_patches is None:
        raise ValueError("A NaFlex image tower exports with a fixed number of patches per image: give "
                         "max_num_patches (--max-num-patches N).")
    return max_num_patches


def _quantization_mode(backbone, format, quantize):
    """The export's quantization mode (None for float), refusing what the
    format cannot run."""
    from keras_siglip.utils.tensors import quantization_modes

    modes = quantization_modes(backbone)
    if modes and quantize is not None:
        raise ValueError(f"The model is already quantized ({', '.join(sorted(modes))}); pass quantize only with a "
                         "float model.")
    if modes and format == "litert":
        raise ValueError("A model quantized with `model.quantize` does not convert to LiteRT (TF Lite has no kernel "
                         "for Keras' quantized matmuls): export the float model with quantize='int8' (--quantize "
                         "int8), the converter's own dynamic-range int8.")
    mode = quantize if quantize is not None else (", ".join(sorted(modes)) or None)
    if mode is not None and mode not in QUANTIZATION[format]:
        raise ValueError(f"A {mode} model does not export to {format}; {format} takes "
                         f"{', '.join(QUANTIZATION[format])} (saved_model takes {', '.join(QUANTIZATION['saved_model'])}).")
    return mode


def _preprocessing(preprocessor, folder, towers):
    """What a deployment must do before the towers, for the manifest; the
    tokenizer's SentencePiece model is written beside it."""
    config = {"class_name": type(preprocessor).__name__, "sequence_length": preprocessor.sequence_length}
    converter = getattr(preprocessor, "image_converter", None)
    if "image" in towers and converter is not None:
        config["image_converter"] = {"class_name": type(converter).__name__, **_plain(converter.get_config())}
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if "text" in towers and tokenizer is not None:
        config["tokenizer"] = {"class_name": type(tokenizer).__name__, "file": TOKENIZER_FILE,
                               **_plain({k: v for k, v in tokenizer.get_config().items()
                                         if k not in ("proto", "config_file", "sequence_length")})}
        with open(os.path.join(folder, TOKENIZER_FILE), "wb") as file:
            file.write(tokenizer.proto)
    return config


def _plain(config):
    """A layer config without Keras' bookkeeping (dtype policies, names)."""
    return {k: v for k, v in config.items() if k not in ("dtype", "name", "trainable")}


def _export_in_tensorflow(backbone, preprocessor, path, format, towers, max_num_patches, quantize, overwrite,
                          verbose):
    """Save the model (and preprocessor) as a preset and export it in a
    subprocess on the TensorFlow backend; its one-line error becomes ours."""
    with tempfile.TemporaryDirectory(prefix="keras_siglip_export_") as tmp:
        preset = os.path.join(tmp, "preset")
        backbone.save_to_preset(preset)
        if preprocessor is not None:
            preprocessor.save_to_preset(preset)
        command = [sys.executable, "-m", "keras_siglip.cli", "export", preset, os.path.abspath(path),
                   "--format", format, "--towers", ",".join(towers)]
        if max_num_patches is not None:
            command += ["--max-num-patches", str(max_num_patches)]
        if quantize is not None:
            command += ["--quantize", quantize]
        if overwrite:
            command.append("--overwrite")
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        run = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if verbose and run.stderr:
            print(run.stderr, end="", file=sys.stderr, flush=True)
        if run.returncode:
            lines = run.stderr.strip().splitlines()
            message = lines[-1].removeprefix("keras-siglip: error: ") if lines else f"exit status {run.returncode}"
            raise RuntimeError(f"The export on the TensorFlow backend failed: {message}")
    return os.fspath(path)
