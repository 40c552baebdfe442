import keras
from keras import ops
from keras_hub.models import Backbone

from keras_siglip.layers.decoder import TextDecoder
from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.models.siglip.siglip_vision_encoder import image_inputs
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin

ENCODER_FORMATS = ("images", "naflex")


def encoder_input_spec(input_format, vit):
    """Fresh symbolic encoder inputs: `(model_inputs_dict, encoder_input)`;
    the encoder input is the images tensor, or the NaFlex dict."""
    if input_format not in ENCODER_FORMATS:
        raise ValueError(f"An encoder-decoder takes input_format in {ENCODER_FORMATS}; got {input_format!r}.")
    inputs = image_inputs(input_format, vit.patch_size, vit.num_channels)
    return inputs, inputs["images"] if input_format == "images" else inputs


def encoder_input(inputs):
    """Model inputs (a dict with `"images"` or the NaFlex keys, or an images
    tensor) -> what the ViT takes: the images, or the NaFlex dict."""
    if not isinstance(inputs, dict):
        return inputs
    if "images" in inputs:
        return inputs["images"]
    missing = {"patches", "patch_coords", "patch_mask"} - set(inputs)
    if missing:
        raise ValueError(f"Expected 'images' or NaFlex inputs; missing {sorted(missing)}.")
    return {key: inputs[key] for key in ("patches", "patch_coords", "patch_mask")}


def encoder_mask(images):
    """`(B, N)` bool real-token mask of NaFlex inputs; None for whole images."""
    if isinstance(images, dict):
        return ops.greater(ops.cast(images["patch_mask"], "int32"), 0)
    return None


class ImageToTextMixin:
    """What the captioner tasks need of an encoder-decoder backbone with a
    `vit` (the shared `VisionTransformer`) and a `decoder` (`TextDecoder`)."""

    def encode_images(self, images):
        """`(B, H, W, C)` images (or NaFlex inputs) -> `(B, N, width)` encoder
        tokens for the decoder; see `encoder_mask` for NaFlex padding. Eager
        inputs are checked (`check_model_images`)."""
        check_model_images(images, "encode_images")
        return self.vit(encoder_input(images), return_tokens=True)

    def encoder_mask(self, images):
        """`(B, N)` bool real tokens of NaFlex inputs; None for whole images."""
        return encoder_mask(encoder_input(images))


@keras.saving.register_keras_serializable(package="keras_siglip")
class CapPaBackbone(ImageToTextMixin, PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """Image captioner (big_vision CapPa `Model`): ViT encoder + `TextDecoder`.

    The encoder is the shared `VisionTransformer` with `pooling="none"`: the
    decoder cross-attends to all patch tokens after `encoder_norm` (no pooling,
    no projection).

    Args:
        vocabulary_size: V (ids `[0, V)`, 0 is padding).
        patch_size, width, depth, num_heads, mlp_dim: encoder ViT sizes.
        image_size: int or `(H, W)`, fixes the encoder position grid
            `(H // P, W // P)` (other sizes run with a resized grid).
        max_length: the decoder position table's length (text length).
        decoder_width, decoder_depth, decoder_num_heads, decoder_mlp_dim:
            decoder sizes; 0 inherits the encoder's (big_vision's convention;
            the CapPa B/16 recipe sets `decoder_depth=6`).
        masked_pred: add the [MASK] token (id V) for parallel prediction
            (CapPa; False for the plain Cap baseline).
        decoder_bias: biases in the decoder blocks' LayerNorms and MLPs
            (False in the CapPa recipe).
        decoder_dropout: dropout in the decoder blocks, training only
            (big_vision `dec_dropout_rate`; 0 in the recipe).
        num_channels: image channels C.
        remat: rematerialise the encoder blocks in the backward pass.
        input_format: `"images"` (fixed resolution, any size) or `"naflex"`
            (SigLIP 2 native aspect ratio: `"patches"`, `"patch_coords"`,
            `"patch_mask"` from a `NaFlexImageConverter`; the decoder never
            attends to padding patches). Same weights either way.

    Inputs: `{"images": (B, H, W, C) float in [-1, 1], "token_ids": (B, L) int}`
    (or the NaFlex keys instead of `"images"`), `L <= max_length`. Output:
    `(B, L, V)` autoregressive (teacher-forced) logits; position t predicts
    `token_ids[:, t]`. Parallel prediction and cached decoding go through
    `encode_images`, `encoder_mask` and `decoder` (a `TextDecoder`).
    """

    def __init__(
        self,
        vocabulary_size,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        image_size=224,
        max_length=64,
        decoder_width=0,
        decoder_depth=0,
        decoder_num_heads=0,
        decoder_mlp_dim=0,
        masked_pred=True,
        decoder_bias=False,
        num_channels=3,
        remat=False,
        input_format="images",
        decoder_dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.vit = VisionTransformer(
            patch_size=patch_size,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            grid_size=(image_size[0] // patch_size, image_size[1] // patch_size),
            pooling="none",
            num_channels=num_channels,
            remat=remat,
            name="vit",
            dtype=dtype,
        )
        self.decoder = TextDecoder(
            vocabulary_size=vocabulary_size,
            width=decoder_width or width,
            depth=decoder_depth or depth,
            num_heads=decoder_num_heads or num_heads,
            mlp_dim=decoder_mlp_dim or mlp_dim,
            max_length=max_length,
            masked_pred=masked_pred,
            use_bias=decoder_bias,
            encoder_width=width,
            dropout=decoder_dropout,
            name="decoder",
            dtype=dtype,
        )
        inputs, images = encoder_input_spec(input_format, self.vit)
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        logits = self.decoder(
            token_ids, self.vit(images, return_tokens=True), encoder_mask=encoder_mask(images)
        )
        super().__init__(
            inputs={**inputs, "token_ids": token_ids},
            outputs=logits,
            dtype=dtype,
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.input_format = input_format
        self.image_size = image_size
        self.max_length = max_length
        self.decoder_sizes = dict(
            decoder_width=decoder_width,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            decoder_mlp_dim=decoder_mlp_dim,
        )
        self.masked_pred = bool(masked_pred)
        self.decoder_bias = bool(decoder_bias)
        self.decoder_dropout = float(decoder_dropout)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a preset folder, URI or name; recipe names (`keras-siglip
        presets`: CapPa B/16, LocCa L/14) build their architecture with random
        weights when `load_weights=False` (no weights were ever published)."""
        from keras_siglip.presets import recipe_presets

        if isinstance(preset, str) and preset in recipe_presets():
            card = recipe_presets()[preset]
            if load_weights:
                raise ValueError(
                    f"{preset!r} is a recipe card ({card['sources']['recipe']}): no weights exist to "
                    "load. Pass `load_weights=False` to build the architecture with random weights."
                )
            return cls(**{**card["config"], **kwargs})
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


    def get_config(self):
        config = super().get_config()
        vit = self.vit.get_config()
        for key in ("patch_size", "width", "depth", "num_heads", "mlp_dim", "num_channels", "remat"):
            config[key] = vit[key]
        config.update(
            vocabulary_size=self.vocabulary_size,
            image_size=self.image_size,
            max_length=self.max_length,
            masked_pred=self.masked_pred,
            decoder_bias=self.decoder_bias,
            decoder_dropout=self.decoder_dropout,
            input_format=self.input_format,
            **self.decoder_sizes,
        )
        return config
