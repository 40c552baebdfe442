import keras
from keras_hub.models import Backbone

from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import ArrayChecksMixin


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPVisionEncoder(ArrayChecksMixin, PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """SigLIP image tower: ViT with a MAP head; output is the image embedding.

    Args:
        patch_size: int P.
        width, depth, num_heads, mlp_dim: ViT sizes (see `keras_siglip.presets.variants.VARIANTS`).
        image_size: int or `(H, W)`, the training resolution; fixes the learned
            position grid `(H // P, W // P)`. Other input sizes run with a resized
            position grid.
        pooling: `"map"` (released SigLIP), `"gap"`, `"token"` or `"none"`.
        num_classes: optional Dense head width (absent in released SigLIP).
        num_channels: input channels.
        input_format: `"images"`: `(B, H, W, C)` float images in [-1, 1], any
            size; `"naflex"`: SigLIP 2 NaFlex patches, a dict `"patches"`
            `(B, N, P*P*C)`, `"patch_coords"` `(B, N, 2)`, `"patch_mask"`
            `(B, N)` (what `NaFlexImageConverter` makes; N is chosen per call);
            `"packed"`: NaViT packed sequences, a dict `"patches"`,
            `"patch_coords"`, `"segment_ids"` `(B, N)`, `"image_mask"` `(B, S)`,
            `"grid_shape"` `(B, S, 2)` (what `keras_siglip.data.pack_dataset`
            makes). The weights are the same for every format.
        remat: recompute each transformer block in the backward pass instead
            of keeping its activations (less memory for large towers, same
            values and gradients). Not a weight property: presets saved
            without it load with `False`.
        position_embedding: `"learned_2d"` (big_vision and every released
            SigLIP), or NaViT's `"factorized"` (absolute row and column
            tables of `image_size // P` entries: the largest grid) or
            `"factorized_fractional"` (row and column tables over [0, 1]);
            see `keras_siglip.layers.vit.PositionEmbedding`.

    Outputs: `(B, width)` (or `(B, num_classes)`); `(B, S, width)` for packed
    sequences.
    """

    def __init__(
        self,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        image_size=224,
        pooling="map",
        num_classes=None,
        num_channels=3,
        input_format="images",
        remat=False,
        position_embedding="learned_2d",
        dtype=None,
        **kwargs,
    ):
        if input_format not in INPUT_FORMATS:
            raise ValueError(
                f"input_format must be one of {INPUT_FORMATS}; got {input_format!r}."
            )
        image_size = _pair(image_size)
        self.vit = VisionTransformer(
            patch_size=patch_size,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            grid_size=(image_size[0] // patch_size, image_size[1] // patch_size),
            pooling=pooling,
            num_classes=num_classes,
            num_channels=num_channels,
            remat=remat,
            position_embedding=position_embedding,
            name="vit",
            dtype=dtype,
        )
        inputs = image_inputs(input_format, patch_size, num_channels)
        if input_format == "images":
            inputs = inputs["images"]
        super().__init__(inputs=inputs, outputs=self.vit(inputs), dtype=dtype, **kwargs)
        self.image_size = image_size
        self.input_format = input_format

    @property
    def patch_size(self):
        return self.vit.patch_size

    @property
    def num_channels(self):
        return self.vit.num_channels

    def _check_arrays(self, x):
        # `predict` / `fit` / `evaluate` on in-memory arrays: raw uint8 or
        # out-of-range images fail clearly (`check_model_images`).
        check_model_images(x, "SigLIPVisionEncoder")

    @property
    def output_dim(self):
        return self.vit.num_classes or self.vit.width

    def get_config(self):
        config = super().get_config()
        vit = self.vit.get_config()
        for key in (
            "patch_size", "width", "depth", "num_heads", "mlp_dim", "pooling",
            "num_classes", "num_channels", "remat", "position_embedding",
        ):
            config[key] = vit[key]
        config["image_size"] = self.image_size
        config["input_format"] = self.input_format
        return config


INPUT_FORMATS = ("images", "naflex", "packed")


def image_inputs(input_format, patch_size, num_channels=3):
    """Fresh `keras.Input`s of an image tower's `input_format`, as a dict."""
    if input_format == "images":
        return {"images": keras.Input(shape=(None, None, num_channels), name="images")}
    patch_dim = patch_size * patch_size * num_channels
    names = {
        "naflex": {"patch_mask": (None,)},
        "packed": {"segment_ids": (None,), "image_mask": (None,), "grid_shape": (None, 2)},
    }[input_format]
    inputs = {
        "patches": keras.Input(shape=(None, patch_dim), name="patches"),
        "patch_coords": keras.Input(shape=(None, 2), dtype="int32", name="patch_coords"),
    }
    for name, shape in names.items():
        inputs[name] = keras.Input(shape=shape, dtype="int32", name=name)
    return inputs


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)
