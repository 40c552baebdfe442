"""Transfer learning with SigLIP models: choose which weights train, then compile and fit.

Recipes (each is Keras' own mechanism, `trainable` flags followed by `compile`):

- Contrastive fine-tuning of both towers: `set_trainable(backbone, image=True,
  text=True)` (the state of a freshly loaded model), `backbone.compile(...)` with
  a smaller learning rate, `backbone.fit(preprocessor({"images": ..., "texts": ...}))`.
- LiT, "locked-image text tuning" (Zhai et al., 2022): `lock_image_tower(backbone)`
  freezes the image tower; the text tower and the contrastive head (`t`, `b`) train.
  The text tower may be pretrained or new (LiT's from-scratch text tower).
- LoRA: `enable_lora(model, rank)` adds low-rank factors to the attention query and
  value projections of a `SigLIPBackbone`, one tower or a `SigLIPImageClassifier`'s
  image tower, and freezes every other backbone weight.
- Linear probe and full fine-tuning of the image tower as a classifier:
  `keras_siglip.models.SigLIPImageClassifier` (`classifier.backbone.trainable = False`
  for the probe).

```python
backbone = ks.models.SigLIPBackbone.from_preset("siglip2_shapes_tiny")
ks.transfer.lock_image_tower(backbone)
backbone.compile()                     # compile *after* changing trainable flags
backbone.fit(x, batch_size=128, epochs=2)
```
"""

import math

from keras_hub.models import Task


def set_trainable(backbone, image=True, text=True):
    """Freeze (`False`) or unfreeze (`True`) each tower of a two-tower model.

    The contrastive head (`t`, `b`) is left as it is (trainable by default);
    freeze it with `backbone.contrastive_head.trainable = False`. Call
    `backbone.compile()` afterwards: Keras reads trainable flags when it builds
    the train step.

    Args:
        backbone: a `SigLIPBackbone` (anything with `vision_encoder` and
            `text_encoder`).
        image, text: whether the image / text tower trains.

    Returns:
        `backbone` (changed in place).
    """
    _check_two_towers(backbone)
    backbone.vision_encoder.trainable = bool(image)
    backbone.text_encoder.trainable = bool(text)
    return backbone


def lock_image_tower(backbone):
    """LiT: freeze the image tower, train the text tower (and `t`, `b`).

    Same as `set_trainable(backbone, image=False, text=True)`; compile after it.

    Returns:
        `backbone` (changed in place).
    """
    return set_trainable(backbone, image=False, text=True)


def enable_lora(model, rank, target_layer_names=None):
    """LoRA on the attention projections; every other backbone weight frozen.

    Calls keras-hub's `Backbone.enable_lora` (low-rank factors `A`, `B` beside
    the frozen kernels of the layers named `"query"` and `"value"`: the encoder
    blocks' and MAP heads' attention), then also freezes those layers' biases,
    which keras-hub leaves trainable: the LoRA factors are then the only
    trainable backbone weights, so `backbone.save_lora_weights("x.lora.h5")`
    holds every change that training makes to the backbone. `B` starts at zero:
    outputs are unchanged until the first update. `save_to_preset` saves the
    merged kernels (a preset without LoRA).

    Args:
        model: a `SigLIPBackbone`, `SigLIPVisionEncoder`, `SigLIPTextEncoder`
            (any keras-hub `Backbone`), or a task such as
            `SigLIPImageClassifier`: LoRA on `model.backbone`, and the task's
            own layers (the classification head) keep their trainable flags.
        rank: int >= 1, the rank of the factors.
        target_layer_names: names of the layers to adapt; default
            `backbone.default_lora_layer_names()` (query and value).

    Returns:
        `model` (changed in place); compile it afterwards.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be an integer >= 1; got {rank!r}.")
    backbone = model.backbone if isinstance(model, Task) else model
    if not hasattr(backbone, "enable_lora"):
        raise TypeError(
            f"enable_lora takes a keras-hub Backbone or Task; got {type(model).__name__}."
        )
    backbone.enable_lora(rank, target_layer_names)
    adapted = [
        layer for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]
    if not adapted:
        names = target_layer_names or backbone.default_lora_layer_names()
        raise ValueError(f"No layer named one of {list(names)} supports LoRA in this model.")
    for layer in adapted:
        if getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False
    return model


def trainable_parameter_count(model):
    """Number of trainable scalars of `model` (what `fit` updates)."""
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def _check_two_towers(backbone):
    if not (hasattr(backbone, "vision_encoder") and hasattr(backbone, "text_encoder")):
        raise TypeError(
            "Expected a two-tower SigLIPBackbone (with `vision_encoder` and "
            f"`text_encoder`); got {type(backbone).__name__}."
        )
