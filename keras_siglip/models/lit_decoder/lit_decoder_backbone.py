import keras
from keras_hub.models import Backbone

from keras_siglip.layers.decoder import TextDecoder
from keras_siglip.models.cappa.cappa_backbone import ImageToTextMixin, encoder_input_spec, encoder_mask
from keras_siglip.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.preset import PresetMixin


@keras.saving.register_keras_serializable(package="keras_siglip")
class LiTDecoderBackbone(ImageToTextMixin, PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """A frozen pretrained image encoder + a small trainable `TextDecoder`
    (LiT-decoder, Beyer et al. 2023: "locked-image tuning" with a decoder).

    The decoder cross-attends to the encoder's output tokens (after
    `encoder_norm`, before its pooling head), so any keras_siglip image tower
    works: a SigLIP / SigLIP 2 `SigLIPVisionEncoder` (MAP-pooled, the pooling
    head is simply not used), fixed resolution or NaFlex.

    Args:
        vision_encoder: a `SigLIPVisionEncoder` (input_format "images" or
            "naflex"), e.g. `SigLIPBackbone.from_preset(...).vision_encoder`.
        vocabulary_size: V, the decoder's output vocabulary (the tokenizer's).
        decoder_width, decoder_depth, decoder_num_heads, decoder_mlp_dim:
            decoder sizes (LiT-decoder: small, e.g. 2-6 blocks).
        max_length: the decoder position table's length (prompt + answer).
        decoder_bias: biases in the decoder blocks' LayerNorms and MLPs.
        decoder_dropout: dropout in the decoder blocks, training only.
        freeze_encoder: keep the encoder's weights fixed (the LiT-decoder
            setting); False fine-tunes it with the decoder.

    Inputs: `{"images": (B, H, W, C) in [-1, 1] (or the NaFlex keys),
    "token_ids": (B, L)}`. Output: `(B, L, V)` teacher-forced logits, position
    t predicting `token_ids[:, t]`.
    """

    def __init__(
        self,
        vision_encoder,
        vocabulary_size,
        decoder_width,
        decoder_depth,
        decoder_num_heads,
        decoder_mlp_dim,
        max_length=64,
        decoder_bias=True,
        freeze_encoder=True,
        decoder_dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(vision_encoder, SigLIPVisionEncoder):
            raise ValueError(
                "`vision_encoder` must be a SigLIPVisionEncoder (e.g. "
                f"`SigLIPBackbone.from_preset(...).vision_encoder`); got {type(vision_encoder).__name__}."
            )
        self.vision_encoder = vision_encoder
        self.decoder = TextDecoder(
            vocabulary_size=vocabulary_size,
            width=decoder_width,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_dim=decoder_mlp_dim,
            max_length=max_length,
            use_bias=decoder_bias,
            encoder_width=self.vit.width,
            dropout=decoder_dropout,
            name="decoder",
            dtype=dtype,
        )
        inputs, images = encoder_input_spec(vision_encoder.input_format, self.vit)
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        logits = self.decoder(
            token_ids, self.vit(images, return_tokens=True), encoder_mask=encoder_mask(images)
        )
        super().__init__(inputs={**inputs, "token_ids": token_ids}, outputs=logits, dtype=dtype, **kwargs)
        # After the base constructor: its `trainable` argument sets every sublayer.
        self.vision_encoder.trainable = not freeze_encoder
        self.vocabulary_size = vocabulary_size
        self.max_length = max_length
        self.decoder_sizes = dict(
            decoder_width=decoder_width,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            decoder_mlp_dim=decoder_mlp_dim,
        )
        self.decoder_bias = bool(decoder_bias)
        self.decoder_dropout = float(decoder_dropout)
        self.freeze_encoder = bool(freeze_encoder)

    @property
    def vit(self):
        """The encoder's `VisionTransformer`."""
        return self.vision_encoder.vit

    @property
    def input_format(self):
        return self.vision_encoder.input_format

    def get_config(self):
        config = super().get_config()
        config.update(
            vision_encoder=keras.layers.serialize(self.vision_encoder),
            vocabulary_size=self.vocabulary_size,
            max_length=self.max_length,
            decoder_bias=self.decoder_bias,
            decoder_dropout=self.decoder_dropout,
            freeze_encoder=self.freeze_encoder,
            **self.decoder_sizes,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["vision_encoder"], dict):
            config["vision_encoder"] = keras.layers.deserialize(config["vision_encoder"])
        return super().from_config(config)
