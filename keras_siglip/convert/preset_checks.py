"""Clear errors for Keras preset folders (ours, and keras-hub's before conversion).

keras-hub's loader reads `config.json` and `model.weights.h5` with `json` and
h5py and lets their errors through: a truncated or damaged file surfaces as a
bare `OSError` / `JSONDecodeError` naming nothing, an integer or boolean
dataset is silently cast into a float weight, and NaN weights load. Here a
local preset folder is checked around keras-hub's loading (`load_checked`):

- before: every top-level `.json` file parses; the weight files match the
  sizes and SHA-256 recorded in `metadata.json` when saved
  (`keras_siglip.utils.checksums`); the weight files exist, open
  and walk (object headers only, no data read); under a plain float dtype
  policy every dataset is a float (Keras stores bfloat16 as 2-byte void with
  a `dtype` attribute), as every variable of such a model is;
- on a failure while loading: the datasets are read in full to find a
  damaged one, and a file that reads but does not fit the model (a missing or
  mis-shaped dataset) is reported naming the file with Keras's diagnosis;
- after (`refuse_nonfinite`, for any preset): float weights holding NaN or
  inf are refused unless `allow_nan=True`.
"""

import math
import os
import re

from keras_siglip.convert.common import (
    CheckpointMismatch, CorruptCheckpoint, NonFiniteWeights, is_float_dtype, nonfinite_weights, shorten,
)
from keras_siglip.convert.huggingface import _read_json

MODEL_WEIGHTS = "model.weights.h5"
SHARDED_WEIGHTS = "model.weights.json"  # keras-hub's sharded weights: an index of .weights.h5 shards
TASK_WEIGHTS = "task.weights.h5"
_BLOCK_BYTES = 64 << 20  # datasets are read back in blocks of rows this large


def load_checked(folder, load, weights=True, float_only=None):
    """`load(load_weights)` (keras-hub loading the local preset `folder`) with
    clear errors for damaged files.

    Args:
        folder: the preset folder.
        load: `load(True)` loads the preset as asked; `load(False)` builds the
            same object without weights (used only to tell, after a failure,
            whether the weights or the model are at fault).
        weights: whether `load(True)` reads weight files (backbones and tasks
            with `load_weights=True`).
        float_only: whether every dataset must be a float; by default, when
            the preset's dtype policy is a plain float one (our models have
            float variables only; keras-hub's SigLIP has integer
            `position_ids`, so its presets pass False).

    Returns:
        What `load(True)` returns.
    """
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            _read_json(os.path.join(folder, name))
    files = weight_files(folder) if weights else []
    if weights:
        from keras_siglip.utils.checksums import verify_checksums

        verify_checksums(folder)
    float_only = _float_policy(folder) if float_only is None else float_only
    for path in files:
        check_weights_file(path, float_only)
    try:
        return load(True)
    except Exception as error:
        if files:
            _explain_failure(files, error, lambda: load(False))
        raise


def weight_files(folder):
    """The weight files keras-hub reads for `folder`: `model.weights.h5` or
    the shards `model.weights.json` lists, and `task.weights.h5` if present;
    `FileNotFoundError` naming what is missing."""
    single, index = os.path.join(folder, MODEL_WEIGHTS), os.path.join(folder, SHARDED_WEIGHTS)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        weight_map = (_read_json(index) or {}).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpoint(f"{index} has no weight_map.")
        names = {n for v in weight_map.values() for n in (v if isinstance(v, list) else [v])}
        files = [os.path.join(folder, name) for name in sorted(names)]
        absent = [os.path.basename(p) for p in files if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(f"{index} lists weight shards that are not in {folder}: {', '.join(absent)}.")
    else:
        raise FileNotFoundError(
            f"{folder} has no {MODEL_WEIGHTS} (nor a sharded {SHARDED_WEIGHTS}): the preset's weights are "
            "missing. Pass load_weights=False to build the model with random weights."
        )
    task = os.path.join(folder, TASK_WEIGHTS)
    return files + ([task] if os.path.isfile(task) else [])


def _float_policy(folder):
    """Whether the preset's backbone has a plain float dtype policy (then every
    variable, hence every dataset, is a float); False for quantized or mixed
    maps, whose integer datasets are legitimate."""
    config = (_read_json(os.path.join(folder, "config.json")) or {}).get("config")
    dtype = config.get("dtype") if isinstance(config, dict) else None
    if dtype is None:
        return True
    if isinstance(dtype, dict):
        if dtype.get("class_name") != "DTypePolicy":
            return False
        dtype = (dtype.get("config") or {}).get("name")
    return isinstance(dtype, str) and is_float_dtype(dtype.removeprefix("mixed_"))


def check_weights_file(path, float_only=True):
    """Open a `.weights.h5` file and walk its datasets' headers (no data is
    read): `CorruptCheckpoint` naming the file when it does not open or walk,
    and naming the datasets when `float_only` and some model weights (outside
    the `optimizer/` group) are not floats."""
    import h5py

    dtypes = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            dtypes[name] = item.attrs.get("dtype", item.dtype)  # bfloat16: void + a dtype attribute

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except Exception as error:  # h5py raises OSError, RuntimeError, KeyError, ValueError ...
        raise CorruptCheckpoint(
            f"{path} is not a readable Keras weights file (truncated, damaged or another format): {error}"
        ) from None
    # A compiled model's file also holds its optimizer's state (an integer step count).
    wrong = [f"{name} ({dtype})" for name, dtype in dtypes.items()
             if float_only and not name.startswith("optimizer/") and not is_float_dtype(dtype)]
    if wrong:
        raise CorruptCheckpoint(
            f"{path} holds datasets that cannot be this model's weights (all of them are floats): "
            f"{shorten(wrong)}."
        )


def _read_back(path):
    """Read every dataset of a weights file, in blocks of rows; a damaged one
    raises `CorruptCheckpoint` naming the file and dataset."""
    import h5py

    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in names:
            try:
                dataset = f[name]
                if not dataset.shape:
                    dataset[()]
                    continue
                row = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
                step = max(1, _BLOCK_BYTES // max(1, row))
                for start in range(0, dataset.shape[0], step):
                    dataset[start:start + step]
            except Exception as error:  # h5py's own error types
                raise CorruptCheckpoint(
                    f"{path}: the dataset {name!r} cannot be read (a damaged file): {error}"
                ) from None


def _explain_failure(files, error, rebuild):
    """After keras-hub failed to load weight files that open: raise a clear
    error naming the file at fault, or return when the weights are not at
    fault (the model cannot be built even without them)."""
    for path in files:
        _read_back(path)
    try:
        rebuild()
    except Exception:
        return
    # Keras's message names the first variable that failed; drop its value dump
    # and the list of every layer object (unnamed beyond their class).
    message = re.sub(r", value=.*?\]>", ">", str(error), flags=re.DOTALL)
    message = re.sub(r"\s*List of objects that could not be loaded:.*", "", message, flags=re.DOTALL)
    raise CheckpointMismatch(
        f"{', '.join(files)} does not fit the model (a dataset missing, extra or of another shape): {message}"
    ) from error


def refuse_nonfinite(model, source, allow_nan=False):
    """Raise `NonFiniteWeights` naming `source` and the float variables of a
    loaded `model` that hold NaN or inf (in the file, or overflowing a
    narrower dtype), unless `allow_nan`."""
    if allow_nan:
        return
    bad = nonfinite_weights(getattr(model, "weights", []))
    if bad:
        raise NonFiniteWeights(
            f"{source} holds non-finite weights (NaN or inf, in the file or after the cast to the model's "
            f"dtype) in {len(bad)} variables: {shorten(bad)}. Pass allow_nan=True to load them anyway."
        )
