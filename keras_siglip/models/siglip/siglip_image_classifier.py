"""A SigLIP image tower as an image classifier (keras-hub `ImageClassifier` conventions)."""

import keras
from keras_hub.models import ImageClassifier, ImageClassifierPreprocessor, Task

from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.models.siglip.siglip_image_converter import SigLIPImageConverter
from keras_siglip.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.preset import PresetMixin, preset_loader


def _check_backbone_class(preset, backbone_cls, wanted):
    if not (isinstance(backbone_cls, type) and issubclass(backbone_cls, wanted)):
        name = getattr(backbone_cls, "__name__", backbone_cls)
        raise ValueError(
            f"Preset {preset!r} holds a {name}; a SigLIP image classifier loads from a "
            "SigLIPBackbone preset (it takes the image tower), a SigLIPVisionEncoder "
            "preset or a saved SigLIPImageClassifier preset."
        )


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPImageClassifierPreprocessor(PresetMixin, ImageClassifierPreprocessor):
    """Raw images (and labels) -> `SigLIPImageClassifier` inputs.

    Wraps a `SigLIPImageConverter` (resize to the model resolution, pixels to
    [-1, 1]); labels and sample weights pass through unchanged. Runs eagerly and
    inside `tf.data`.

    Args:
        image_converter: a `SigLIPImageConverter` (or a `NaFlexImageConverter`
            for a NaFlex image tower).

    Call args: `x` images `(H, W, 3)` or `(B, H, W, 3)`, uint8 or float in
    [0, 255]; optional `y`, `sample_weight`. Returns `x` as `(B, H', W', 3)`
    float in [-1, 1], or `(x, y)` / `(x, y, sample_weight)`.

    `from_preset` takes a classifier preset or a two-tower `SigLIPBackbone`
    preset (it uses that preset's image converter).
    """

    backbone_cls = SigLIPVisionEncoder
    image_converter_cls = SigLIPImageConverter

    @classmethod
    def from_preset(cls, preset, **kwargs):
        preset, loader, backbone_cls = preset_loader(preset)
        if isinstance(backbone_cls, type) and issubclass(backbone_cls, SigLIPBackbone):
            return cls(image_converter=loader.load_image_converter(cls.image_converter_cls), **kwargs)
        _check_backbone_class(preset, backbone_cls, SigLIPVisionEncoder)
        return super().from_preset(preset, **kwargs)


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPImageClassifier(PresetMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, ImageClassifier):
    """Image classification on a SigLIP image tower's pooled (MAP head) output.

    `images -> SigLIPVisionEncoder -> (B, width) -> Dropout -> Dense(num_classes)`.
    The head is new (randomly initialised); the image tower usually comes from
    a two-tower SigLIP preset:

    ```python
    classifier = ks.models.SigLIPImageClassifier.from_preset(
        "siglip2_shapes_tiny", num_classes=48
    )
    # Full fine-tuning: every weight trains (the state after construction).
    classifier.fit(images, labels, epochs=3)

    # Linear probe: freeze the image tower, recompile, train the head only.
    classifier.backbone.trainable = False
    classifier.compile()
    classifier.fit(images, labels, epochs=3)
    ```

    Freezing follows Keras: set `trainable` on `classifier.backbone`, then
    `compile()` (Keras reads trainable flags when it compiles the train step).
    LoRA: `keras_siglip.transfer.enable_lora(classifier, rank)` trains the
    LoRA factors of the tower's attention and the head.

    Args:
        backbone: a `SigLIPVisionEncoder` (for a `SigLIPBackbone`, pass its
            `vision_encoder`) with `pooling` `"map"`, `"gap"` or `"token"`.
        num_classes: int >= 1, the number of classes.
        preprocessor: a `SigLIPImageClassifierPreprocessor`, or `None` to feed
            preprocessed images.
        activation: of the `Dense` head; `None` (default) gives logits,
            `"softmax"` probabilities (the `"auto"` loss follows it).
        dropout: dropout rate before the head.
        head_dtype: dtype (policy) of the head; defaults to the backbone's.

    Inputs: raw images `(B, H, W, 3)` through `fit` / `predict` / `evaluate`
    (the preprocessor resizes them); `(B, H, W, 3)` floats in [-1, 1] when
    calling the model directly. Labels: integers in `[0, num_classes)`.
    Outputs: `(B, num_classes)` logits (or `activation` of them).
    """

    backbone_cls = SigLIPVisionEncoder
    preprocessor_cls = SigLIPImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        activation=None,
        dropout=0.0,
        head_dtype=None,
        **kwargs,
    ):
        if isinstance(backbone, SigLIPBackbone):
            raise TypeError(
                "SigLIPImageClassifier takes the image tower: pass "
                "`backbone.vision_encoder`, not the two-tower SigLIPBackbone."
            )
        if not isinstance(backbone, SigLIPVisionEncoder):
            raise TypeError(f"`backbone` must be a SigLIPVisionEncoder; got {type(backbone).__name__}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1; got {num_classes!r}.")
        if backbone.input_format == "packed" or backbone.vit.pooling == "none":
            raise ValueError(
                "The image tower must give one vector per image: `pooling` 'map', 'gap' or "
                f"'token' and input_format 'images' or 'naflex'; got pooling="
                f"{backbone.vit.pooling!r}, input_format={backbone.input_format!r}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        head_policy = keras.dtype_policies.get(head_dtype or backbone.dtype_policy)
        # A quantized head (from a quantized model's config): dropout computes in its source dtype.
        dropout_policy = (head_policy.name.split("_from_", 1)[1] if head_policy.quantization_mode
                          else head_policy)

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=dropout_policy, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_policy, name="predictions"
        )

        # === Functional model ===
        inputs = backbone.input
        outputs = self.output_dense(self.output_dropout(backbone(inputs)))
        # keras-hub's ImageClassifier.__init__ adds a 2-D pooler; the pooled
        # vector comes from the tower's MAP head here.
        compile = kwargs.pop("compile", True)
        Task.__init__(self, inputs=inputs, outputs=outputs, compile=False, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.activation = activation
        self.dropout = dropout
        self.head_dtype = head_dtype
        # Compiled after `activation` is set, so the "auto" loss matches it
        # (keras-hub's ImageClassifier compiles before and always uses logits).
        if compile:
            self.compile()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Build from a preset folder, URI or name.

        Args:
            preset: a two-tower `SigLIPBackbone` preset (e.g.
                `"siglip2_shapes_tiny"`, a converted checkpoint): its image
                tower and image converter, with a new head; `num_classes` is
                then required. A saved classifier preset: the whole task,
                head included (give `num_classes` to replace the head with a
                new one of that size).
            load_weights: load the saved weights (else random ones).
            **kwargs: constructor arguments (`num_classes`, `activation`,
                `dropout`, `head_dtype`, `preprocessor`, `dtype`).
        """
        preset, loader, backbone_cls = preset_loader(preset)
        if isinstance(backbone_cls, type) and issubclass(backbone_cls, SigLIPBackbone):
            if "num_classes" not in kwargs:
                raise ValueError(
                    f"Preset {preset!r} is a two-tower SigLIP model without a classification "
                    "head; pass `num_classes=` to add one."
                )
            if "backbone" not in kwargs:
                dtype = kwargs.pop("dtype", None)
                two_towers = SigLIPBackbone.from_preset(preset, load_weights=load_weights, dtype=dtype)
                kwargs["backbone"] = two_towers.vision_encoder
            if "preprocessor" not in kwargs:
                kwargs["preprocessor"] = cls.preprocessor_cls.from_preset(preset)
            return cls(**kwargs)
        _check_backbone_class(preset, backbone_cls, SigLIPVisionEncoder)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Configure training; call again after changing `trainable` flags.

        Defaults (`"auto"`): Adam at a rate that fits what trains: 1e-2
        when only the head trains (linear probe: a convex problem on fixed
        features), 3e-3 when the head and LoRA factors train, 1e-4 for full
        fine-tuning (keras-hub's ImageClassifier uses 5e-5); sparse
        categorical cross-entropy (from logits unless `activation="softmax"`);
        sparse categorical accuracy.
        """
        if optimizer == "auto":
            head = {id(v) for v in self.output_dense.weights}
            tower = [v for v in self.trainable_weights if id(v) not in head]
            if not tower:
                learning_rate = 1e-2
            elif all("lora_kernel" in v.path for v in tower):
                learning_rate = 3e-3
            else:
                learning_rate = 1e-4
            optimizer = keras.optimizers.Adam(learning_rate)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        config = Task.get_config(self)
        activation, head_dtype = self.activation, self.head_dtype
        if self.output_dense.quantization_mode is not None:  # quantize() changed the head
            head_dtype = self.output_dense.dtype_policy
        if callable(activation):
            activation = keras.activations.serialize(activation)
        if isinstance(head_dtype, keras.DTypePolicy):
            head_dtype = keras.dtype_policies.serialize(head_dtype)
        config.update(
            num_classes=self.num_classes,
            activation=activation,
            dropout=self.dropout,
            head_dtype=head_dtype,
        )
        return config
