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
import numpy as np


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
        source: a short description of where it came from.
    """

    config: dict
    tensors: Callable[[], Iterator]
    num_tensors: int
    tokenizer: Optional[dict] = None
    image_converter: Optional[tuple] = None
    source: str = ""


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not fit the model (names or shapes)."""


def build_backbone(config, dtype=None):
    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    return SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"], dtype=dtype),
        SigLIPTextEncoder(**config["text_encoder"], dtype=dtype),
        dtype=dtype,
    )


def load_into(backbone, checkpoint, progress=True):
    """Assign a checkpoint's tensors into `backbone`, one tensor at a time.

    Every model weight must be assigned exactly once with its exact shape;
    otherwise nothing is reported as loaded and one `CheckpointMismatch` lists
    every missing, unexpected, duplicated and mis-shaped name.
    """
    variables = {v.path: v for v in backbone.weights}
    assigned, unexpected, duplicated, misshaped, seen = set(), [], [], [], set()
    bar = keras.utils.Progbar(checkpoint.num_tensors, unit_name="tensor") if progress else None
    for count, (path, value) in enumerate(checkpoint.tensors(), 1):
        variable = variables.get(path)
        if variable is None:
            unexpected.append(path)
        elif path in assigned:
            duplicated.append(path)
        elif tuple(np.shape(value)) != tuple(variable.shape):
            misshaped.append(f"{path}: checkpoint {tuple(np.shape(value))} vs model {tuple(variable.shape)}")
            seen.add(path)
        else:
            variable.assign(np.asarray(value, dtype=variable.dtype))
            assigned.add(path)
        if bar is not None:
            bar.update(count)
    missing = sorted(set(variables) - assigned - seen)
    if missing or unexpected or duplicated or misshaped:
        lines = [f"{checkpoint.source or 'The checkpoint'} does not match the model:"]
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("duplicated", duplicated), ("mis-shaped", misshaped)):
            if names:
                lines.append(f"  {label} ({len(names)}): " + ", ".join(names))
        raise CheckpointMismatch("\n".join(lines))
    return backbone
