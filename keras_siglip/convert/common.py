"""What every checkpoint reader produces, and how it becomes a keras_siglip preset.

A reader (`big_vision.py`, `huggingface.py`, `keras_hub.py`) turns a source into a
`Checkpoint`: the `SigLIPBackbone` architecture and a stream of `(our weight path,
array in our layout)` pairs. Tensors are read one at a time and assigned into the
model as they come, so converting needs about one copy of the weights in memory
(the model) plus the largest single tensor, whatever the source's size.
"""

import dataclasses
from typing import Callable, Iterator, Optional

import keras
import ml_dtypes
import numpy as np

from keras_siglip.utils.memory import host_tensor


@dataclasses.dataclass
class Checkpoint:
    """A readable checkpoint.

    Attributes:
        config: `{"vision_encoder": kwargs, "text_encoder": kwargs}` for
            `SigLIPVisionEncoder` / `SigLIPTextEncoder` (the preset-card layout).
        tensors: a callable returning an iterator of `(path, array)` in our
            weight paths (`vit/...`, `transformer/...`, `contrastive_head/...`)
            and our layouts; each array is read when the iterator reaches it.
        num_tensors: how many pairs `tensors()` yields (for progress).
        tokenizer: `{"proto": bytes, "pad_token": str}` when the source has one.
        image_converter: `("SigLIPImageConverter" | "NaFlexImageConverter", kwargs)`
            describing the source's preprocessing, or None.
        source: a short description of where it came from (naming the file
            or folder).
        origins: optional `{our path: "file and tensor name it is read from"}`,
            quoted by `load_into`'s errors.
    """

    config: dict
    tensors: Callable[[], Iterator]
    num_tensors: int
    tokenizer: Optional[dict] = None
    image_converter: Optional[tuple] = None
    source: str = ""
    origins: Optional[dict] = None


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not fit the model (names or shapes)."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read as what it claims to be (truncated,
    damaged, another format) or that holds a tensor of a dtype no weight can
    have (integers, booleans, strings where floats belong). The message names
    the file and, where one is at fault, the tensor."""


class NonFiniteWeights(CorruptCheckpoint):
    """Weights holding NaN or infinity: refused unless `allow_nan=True`."""


# Lists of tensors at fault are cut to this many names in error messages.
_SHOWN = 8


def is_float_dtype(dtype):
    """True for real floating-point dtypes: numpy's and ml_dtypes' (bfloat16,
    float8 ...); False for integers, booleans, complex, strings, void."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return False
    if dtype.kind == "c":
        return False
    try:
        ml_dtypes.finfo(dtype)
    except ValueError:
        return False
    return True


def shorten(names, limit=_SHOWN):
    """`"a, b, c"`, the first `limit` of `names` and how many more there are."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def nonfinite_weights(variables):
    """Paths of the float variables holding NaN or infinity (one pass over the
    weights, each copied to host memory in turn)."""
    return [
        v.path for v in variables
        if is_float_dtype(v.dtype) and not np.isfinite(keras.ops.convert_to_numpy(v)).all()
    ]


def build_backbone(config, dtype=None):
    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    return SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"], dtype=dtype),
        SigLIPTextEncoder(**config["text_encoder"], dtype=dtype),
        dtype=dtype,
    )


def load_into(backbone, checkpoint, progress=True, allow_nan=False):
    """Assign a checkpoint's tensors into `backbone`, one tensor at a time.

    Every model weight must be assigned exactly once with its exact shape;
    otherwise nothing is reported as loaded and one `CheckpointMismatch` lists
    every missing, unexpected, duplicated and mis-shaped name. A float weight
    takes float tensors only: float16 / bfloat16 / float64 ones are cast to
    the weight's dtype, while integer, boolean or string tensors raise
    `CorruptCheckpoint`. Tensors that hold NaN or infinity once cast (in the
    file, or overflowing a narrower dtype) raise `NonFiniteWeights` unless
    `allow_nan`. Each error names the source and the tensors at fault
    (with the file and tensor name they came from, `checkpoint.origins`).
    """
    variables = {v.path: v for v in backbone.weights}
    origins = checkpoint.origins or {}

    def origin(path):  # " (from file 'name')", unless it only repeats the path
        found = origins.get(path)
        return "" if found is None or found == repr(path) else f" (from {found})"

    def where(path):
        return path + origin(path)

    assigned, unexpected, duplicated, misshaped, seen = set(), [], [], [], set()
    mistyped, nonfinite = [], []
    bar = keras.utils.Progbar(checkpoint.num_tensors, unit_name="tensor") if progress else None
    for count, (path, value) in enumerate(checkpoint.tensors(), 1):
        variable = variables.get(path)
        if variable is None:
            unexpected.append(where(path))
        elif path in assigned:
            duplicated.append(where(path))
        elif tuple(np.shape(value)) != tuple(variable.shape):
            misshaped.append(f"{path}: checkpoint {tuple(np.shape(value))} vs model {tuple(variable.shape)}"
                             + origin(path))
            seen.add(path)
        elif is_float_dtype(variable.dtype) and not is_float_dtype(np.asarray(value).dtype):
            mistyped.append(f"{path}: {np.asarray(value).dtype} where {variable.dtype} weights belong" + origin(path))
            seen.add(path)
        else:
            array = np.asarray(value, dtype=variable.dtype)
            if not allow_nan and is_float_dtype(array.dtype) and not np.isfinite(array).all():
                nonfinite.append(where(path))
            variable.assign(host_tensor(array))
            assigned.add(path)
        if bar is not None:
            bar.update(count)
    missing = sorted(set(variables) - assigned - seen)
    source = checkpoint.source or "The checkpoint"
    if missing or unexpected or duplicated or misshaped:
        lines = [f"{source} does not match the model:"]
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("duplicated", duplicated), ("mis-shaped", misshaped), ("wrong dtype", mistyped)):
            if names:
                lines.append(f"  {label} ({len(names)}): " + ", ".join(names))
        raise CheckpointMismatch("\n".join(lines))
    if mistyped:
        raise CorruptCheckpoint(
            f"{source} holds tensors that cannot be weights (a float is expected; "
            f"float16 / bfloat16 / float64 are cast): {shorten(mistyped)}."
        )
    if nonfinite:
        raise NonFiniteWeights(
            f"{source} holds non-finite weights (NaN or inf, in the file or after the cast to the "
            f"model's dtype) in {len(nonfinite)} tensors: {shorten(nonfinite)}. Pass allow_nan=True "
            "to load them anyway."
        )
    return backbone
