"""Preset names, clear errors for unknown ones, and atomic preset writes."""

import difflib
import os

from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

# The atomic writers live in `atomic`; imported here, where presets are written.
from keras_siglip.utils.atomic import (  # noqa: F401
    _OPEN_WRITES, DestinationKindError, atomic_directory, atomic_file, recover,
)


def known_preset_names():
    from keras_siglip.presets import PUBLISHED_PRESETS

    return sorted(set(BUILTIN_PRESETS) | set(PUBLISHED_PRESETS))


def check_preset(preset):
    """Raise a clear error unless `preset` is a URI, a folder or a known name.

    A folder missing because its writer was killed between the two renames
    of a commit (`keras_siglip.utils.atomic`) is first restored from the
    last complete version it left beside it (`atomic.recover`).
    """
    if not isinstance(preset, (str, os.PathLike)):
        raise TypeError(f"A preset must be a name, URI or folder path; got {preset!r}.")
    preset = os.fspath(preset)
    if "://" in preset or os.path.isdir(preset) or preset in BUILTIN_PRESETS:
        return preset
    if recover(preset):  # a folder an interrupted write left under a hidden name
        from keras_siglip.convert import resolve_preset

        return check_preset(resolve_preset(preset))
    if os.path.exists(preset):
        raise ValueError(f"Preset {preset!r} is a file; a preset is a folder (or a big_vision .npz).")
    names = known_preset_names()
    close = difflib.get_close_matches(preset, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown preset {preset!r}: not a known name, a folder, or a "
        f"kaggle:// / hf:// URI.{hint} List the names with `keras-siglip presets`."
    )


def preset_loader(preset):
    """`(resolved preset, keras-hub loader, backbone class)`; converts foreign
    checkpoints (big_vision, Hugging Face, keras-hub) once, like every
    `from_preset` here."""
    from keras_hub.src.utils.preset_utils import get_preset_loader

    from keras_siglip.convert import resolve_preset

    preset = check_preset(resolve_preset(preset))
    loader = get_preset_loader(preset)
    return preset, loader, loader.check_backbone_class()


def _loads_weights(cls, kwargs):
    """Whether `cls.from_preset(..., **kwargs)` reads weight files (a backbone
    or task with `load_weights=True`)."""
    from keras_hub.models import Backbone, Task

    return issubclass(cls, (Backbone, Task)) and bool(kwargs.get("load_weights", True))


def saved_policy_map(preset):
    """The serialized `DTypePolicyMap` a quantized backbone was saved with, or
    None. keras-hub's backbone loader passes `dtype=None` over the saved one,
    which builds float layers that then cannot take the saved integer kernels;
    passing the saved map back keeps each quantized layer quantized."""
    path = os.path.join(preset, "config.json") if os.path.isdir(preset) else None
    if path is None or not os.path.isfile(path):
        return None
    import json

    with open(path, encoding="utf-8") as file:
        dtype = json.load(file).get("config", {}).get("dtype")
    is_map = isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicyMap"
    return dtype if is_map else None


def _load_with_checks(preset, load, weights):
    """`load(True)`, with the file checks of `preset_checks.load_checked` for a
    local folder (other presets are keras-hub's to fetch)."""
    if not os.path.isdir(preset):
        return load(True)
    from keras_siglip.convert.preset_checks import load_checked

    return load_checked(preset, load, weights)


class PresetMixin:
    """Adds name checking and file checks to `from_preset` and atomic `save_to_preset`."""

    @classmethod
    def from_preset(cls, preset, allow_nan=False, **kwargs):
        """Also takes big_vision `.npz` files and Hugging Face / keras-hub folders
        or `hf://` / `kaggle://` URIs of them: converted once, then cached.

        Damaged files give clear errors naming the file (`CorruptCheckpoint`,
        `CheckpointMismatch`, `FileNotFoundError`; see
        `keras_siglip.convert.preset_checks`), and loaded weights holding NaN
        or inf raise `NonFiniteWeights` naming them unless `allow_nan=True`
        (also passed on to a conversion).
        """
        from keras_hub.models import Backbone

        from keras_siglip.convert import resolve_preset
        from keras_siglip.utils.memory import weights_to_be_loaded

        preset = check_preset(resolve_preset(preset, allow_nan=allow_nan))
        parent = super()
        weights = _loads_weights(cls, kwargs)
        # A backbone's weights file holds every weight it builds (Keras refuses a layer whose
        # weights are missing), so random ones would be overwritten at once: on JAX drawing them
        # compiled one program per weight shape (2.5 of the 3.2 s of loading the shipped model).
        placeholders = weights and issubclass(cls, Backbone)
        if weights and kwargs.get("dtype") is None and saved_policy_map(preset):
            kwargs["dtype"] = saved_policy_map(preset)

        def load(load_weights):
            if not load_weights:
                return parent.from_preset(preset, **{**kwargs, "load_weights": False})
            if not placeholders:
                return parent.from_preset(preset, **kwargs)
            with weights_to_be_loaded():
                return parent.from_preset(preset, **kwargs)

        loaded = _load_with_checks(preset, load, weights)
        if weights:
            from keras_siglip.convert.preset_checks import MODEL_WEIGHTS, refuse_nonfinite

            refuse_nonfinite(loaded, f"{preset} ({MODEL_WEIGHTS})", allow_nan)
        return loaded

    def quantize(self, mode=None, **kwargs):
        """Keras' `quantize`, with one garbage collection at the end instead of
        one per replaced kernel: Keras collects whenever a layer drops its
        float kernel, about 0.8 s each with TensorFlow, JAX and torch loaded
        (30 s for the 900k-weight shipped model; under a second this way).
        Keras' warning for each layer without weights to quantize (norms,
        dropout, ...) is not shown, nor, for `float8` (Keras' float8 covers
        matmuls), that of each embedding lookup, which stays float. A task's
        preprocessor (tokenizer, image resizing) is left alone: Keras would
        refuse its unbuilt layers halfway through, leaving the model half
        quantized."""
        import gc
        import warnings

        preprocessor = getattr(self, "preprocessor", None)
        if preprocessor is not None:
            kwargs["filters"] = _skipping(preprocessor._flatten_layers(), kwargs.get("filters"))

        collect = gc.collect
        gc.collect = lambda *args, **kwargs: 0
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Layer .* does not have a `quantize` method")
                if mode == "float8":
                    warnings.filterwarnings("ignore", message="Invalid quantization mode. Expected one of")
                return super().quantize(mode, **kwargs)
        finally:
            gc.collect = collect
            gc.collect()

    def save_to_preset(self, preset_dir, **kwargs):
        """keras-hub's `save_to_preset`, atomic (an interrupted save leaves the
        old preset whole), with the weight files' checksums recorded in
        `metadata.json` (verified by every local `from_preset`)."""
        if os.path.realpath(os.fspath(preset_dir)) in _OPEN_WRITES:
            return self._save_and_record(preset_dir, **kwargs)
        with atomic_directory(preset_dir) as tmp:
            self._save_and_record(tmp, **kwargs)

    def _save_and_record(self, folder, **kwargs):
        from keras_hub.models import Backbone

        from keras_siglip.utils.checksums import record_checksums

        super().save_to_preset(folder, **kwargs)
        backbone = self if isinstance(self, Backbone) else getattr(self, "backbone", None)
        record_checksums(folder, backbone)


def _skipping(layers, filters):
    """`quantize` filters that never select `layers`, else as Keras reads
    `filters` (a regex or list of regexes on layer names, or a callable)."""
    import re

    if filters is not None and not isinstance(filters, (str, list, tuple)) and not callable(filters):
        return filters  # Keras names the bad argument
    skip = {id(layer) for layer in layers}
    patterns = [filters] if isinstance(filters, str) else filters

    def keep(layer):
        if id(layer) in skip:
            return False
        if filters is None:
            return True
        if callable(filters):
            return filters(layer)
        return any(re.search(pattern, layer.name) for pattern in patterns)

    return keep
