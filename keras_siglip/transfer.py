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
- PaliGemma (`PaliGemmaBackbone` or `PaliGemmaCausalLM`): `enable_lora(lm, rank)`
  puts the factors on the query and value projections of every Gemma block only
  (`lora_vit=True` adds the ViT's query and value); everything else, the image
  tower and its projector included, is frozen. `freeze_image_tower(lm)` freezes
  the ViT and projector of a fully trainable model (big_vision's "frozen image
  encoder" transfer), `train_projector=True` keeps the projector training (also
  after `enable_lora`). Both work with `dtype="bfloat16"` / `"mixed_bfloat16"`
  and `remat=True` models.

```python
backbone = ks.models.SigLIPBackbone.from_preset("siglip2_shapes_tiny")
ks.transfer.lock_image_tower(backbone)
backbone.compile()                     # compile *after* changing trainable flags
backbone.fit(x, batch_size=128, epochs=2)

lm = ks.models.PaliGemmaCausalLM.from_preset("my_paligemma")
ks.transfer.enable_lora(lm, rank=4)    # Gemma query/value; frozen ViT, projector, embeddings
lm.compile(optimizer=keras.optimizers.AdamW(1e-3))
lm.fit({"images": x, "prompts": p, "responses": r}, batch_size=8)
lm.backbone.save_lora_weights("detect.lora.h5")   # the only weights that changed
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


def enable_lora(model, rank, target_layer_names=None, lora_vit=False):
    """LoRA on the attention projections; every other backbone weight frozen.

    Calls keras-hub's `Backbone.enable_lora` (low-rank factors `A`, `B` beside
    the frozen kernels of the layers named `"query"` and `"value"`: the encoder
    blocks' and MAP heads' attention), then also freezes those layers' biases,
    which keras-hub leaves trainable: the LoRA factors are then the only
    trainable backbone weights, so `backbone.save_lora_weights("x.lora.h5")`
    holds every change that training makes to the backbone. `B` starts at zero:
    outputs are unchanged until the first update. `save_to_preset` saves the
    merged kernels (a preset without LoRA).

    PaliGemma (a `PaliGemmaBackbone` or `PaliGemmaCausalLM`): the factors go on
    the query and value einsums of every Gemma block (kernels `(N, D, H)` and
    `(K, D, H)`: `A` `(N, D, r)`, `B` `(r, H)`), and with `lora_vit=True` also
    on the image tower's query and value; the ViT, its projector (`vit.head`),
    the token embedding and every norm stay frozen. keras-hub's own
    `backbone.enable_lora` would adapt both towers (the names match in both).
    To load saved factors into a fresh model, call this function with the same
    `rank` and `lora_vit` first, then `backbone.load_lora_weights(path)`.

    Args:
        model: a `SigLIPBackbone`, `SigLIPVisionEncoder`, `SigLIPTextEncoder`
            (any keras-hub `Backbone`), or a task such as
            `SigLIPImageClassifier` or `PaliGemmaCausalLM`: LoRA on
            `model.backbone`, and the task's own layers (the classification
            head) keep their trainable flags.
        rank: int >= 1, the rank of the factors.
        target_layer_names: names of the layers to adapt; default
            `backbone.default_lora_layer_names()` (query and value).
        lora_vit: PaliGemma only: also adapt the image tower.

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
    if _is_pali_gemma(backbone):
        scopes = [backbone.decoder] + ([backbone.vit] if lora_vit else [])
        _enable_lora_within(backbone, rank, target_layer_names, scopes)
    elif lora_vit:
        raise ValueError(
            "`lora_vit` is for PaliGemma models (an image tower and a Gemma decoder); "
            f"got {type(backbone).__name__}. Pass the vision encoder itself instead."
        )
    else:
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


def freeze_image_tower(model, train_projector=False):
    """Freeze the image tower of a PaliGemma model (or a two-tower SigLIP model).

    PaliGemma: every weight of the ViT and of its projector (`vit.head`, the
    Dense layer from ViT width to Gemma width) stops training, and with
    `train_projector=True` the projector trains (again). Other weights keep
    their flags, so after `enable_lora` the LM trains through its LoRA factors
    only, and on a freshly loaded model the whole LM trains. Two-tower models:
    the image tower stops training (`set_trainable(image=False)` without
    touching the text tower). Call `compile()` afterwards.

    Args:
        model: a `PaliGemmaBackbone` / `PaliGemmaCausalLM`, or a two-tower
            `SigLIPBackbone`.
        train_projector: PaliGemma only: keep the projector trainable.

    Returns:
        `model` (changed in place).
    """
    backbone = model.backbone if isinstance(model, Task) else model
    if _is_pali_gemma(backbone):
        backbone.vit.trainable = False
        if train_projector:
            backbone.vit.head.trainable = True
        return model
    if train_projector:
        raise ValueError("`train_projector` is for PaliGemma models (a ViT with a projector head).")
    _check_two_towers(backbone)
    backbone.vision_encoder.trainable = False
    return model


def trainable_parameter_count(model):
    """Number of trainable scalars of `model` (what `fit` updates)."""
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def _is_pali_gemma(backbone):
    from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone

    return isinstance(backbone, PaliGemmaBackbone)


def _enable_lora_within(backbone, rank, target_layer_names, scopes):
    """keras-hub's `Backbone.enable_lora`, restricted to the layers under `scopes`.

    Keeps keras-hub's bookkeeping (`_lora_rank`, and `_lora_enabled_layers`: the
    indices among the backbone's layers with weights), so the backbone's
    `save_lora_weights` / `load_lora_weights` work unchanged.
    """
    names = list(target_layer_names or backbone.default_lora_layer_names())
    inside = {id(layer) for scope in scopes for layer in scope._flatten_layers(include_self=False)}
    backbone.trainable = True
    backbone._lora_enabled_layers = []
    backbone._lora_rank = rank
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    with_weights = [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]
    for index, layer in enumerate(with_weights):
        if id(layer) in inside and layer.name in names and hasattr(layer, "enable_lora"):
            layer.trainable = True
            layer.enable_lora(rank)
            backbone._lora_enabled_layers.append(index)


def _check_two_towers(backbone):
    if not (hasattr(backbone, "vision_encoder") and hasattr(backbone, "text_encoder")):
        raise TypeError(
            "Expected a two-tower SigLIPBackbone (with `vision_encoder` and "
            f"`text_encoder`); got {type(backbone).__name__}."
        )
