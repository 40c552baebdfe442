"""PaliGemma 1 and 2: the shared ViT (So400m/14) + a Gemma 1 / Gemma 2 decoder.

Assembly (big_vision `models/proj/paligemma/paligemma.py`, HF `PaliGemmaModel`):
every patch token of the ViT (after `encoder_norm`) goes through the Dense `head`
(`pooling="none"`, `num_classes=hidden_dim`: PaliGemma's projector, with bias),
and the sequence `[image tokens, embed(text)]` enters Gemma. Only text embeddings
are multiplied by `sqrt(hidden_dim)`; image tokens are not (HF scatters the
projected features into the already scaled `inputs_embeds`; big_vision passes
them as an unscaled prefix). Attention is prefix-LM: image + prefix tokens see
each other fully, the suffix is causal (`keras_siglip.layers.gemma`).
"""

import keras
from keras import ops
from keras_hub.models import Backbone

from keras_siglip.layers.gemma import GemmaDecoder, gemma_parameter_count
from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import check_token_ids


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaBackbone(PresetMixin, Backbone):
    """Image + text -> next-token logits of the text positions.

    Args:
        vocabulary_size: V (257,152 for the released models: Gemma's 256,000 +
            1024 `<locNNNN>` + 128 `<segNNN>`).
        image_size: int, square input size (224, 448, 896); fixes the image
            token count `(image_size // vit_patch_size) ** 2`.
        num_layers, num_query_heads, num_key_value_heads, hidden_dim,
        intermediate_dim, head_dim: Gemma sizes.
        query_pre_attn_scalar, attention_logit_soft_cap, final_logit_soft_cap,
        use_post_norms, sliding_window: Gemma 2 options (see `GemmaDecoder`).
        vit_patch_size, vit_hidden_dim, vit_num_layers, vit_num_heads,
        vit_intermediate_dim: image tower sizes (So400m/14 by default).
        dropout: the decoder's dropout, training only.
        remat: rematerialise the image tower's blocks in the backward pass.

    Inputs:
        `"images"`: `(B, image_size, image_size, 3)` float in [-1, 1].
        `"token_ids"`: `(B, L)` int text ids `[BOS, prefix..., "\\n", suffix..., EOS, pad...]`.
        `"padding_mask"`: `(B, L)`, 1 for real text tokens.
        `"response_mask"`: `(B, L)`, 1 on the suffix (causal), 0 on the prefix
            (full attention with the image); big_vision's `mask_ar` of the text.

    Output:
        `(B, L, V)` logits of the text positions (position t predicts token
        t + 1), as big_vision's `text_logits`.

    `embed_inputs` and `sequence_masks` give the `(B, N + L, ...)` decoder
    inputs for `decoder.call_with_cache` (generation).
    """

    def __init__(
        self,
        vocabulary_size,
        image_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        head_dim,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=None,
        use_post_norms=False,
        sliding_window=None,
        vit_patch_size=14,
        vit_hidden_dim=1152,
        vit_num_layers=27,
        vit_num_heads=16,
        vit_intermediate_dim=4304,
        dropout=0.0,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(image_size, int) or image_size < vit_patch_size:
            raise ValueError(
                f"image_size must be an int of at least one {vit_patch_size}px patch; got {image_size!r}."
            )
        grid = image_size // vit_patch_size
        self.vit = VisionTransformer(
            patch_size=vit_patch_size,
            width=vit_hidden_dim,
            depth=vit_num_layers,
            num_heads=vit_num_heads,
            mlp_dim=vit_intermediate_dim,
            grid_size=(grid, grid),
            pooling="none",
            num_classes=hidden_dim,
            remat=remat,
            name="vit",
            dtype=dtype,
        )
        decoder_config = dict(
            num_layers=num_layers,
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            head_dim=head_dim,
            query_pre_attn_scalar=query_pre_attn_scalar,
            attention_logit_soft_cap=attention_logit_soft_cap,
            final_logit_soft_cap=final_logit_soft_cap,
            use_post_norms=bool(use_post_norms),
            sliding_window=sliding_window,
            dropout=float(dropout),
        )
        self.decoder = GemmaDecoder(vocabulary_size, **decoder_config, name="gemma", dtype=dtype)
        self.vit.build((None, image_size, image_size, 3))
        self.decoder.build()
        self.num_image_tokens = grid * grid

        inputs = {
            "images": keras.Input(shape=(image_size, image_size, 3), name="images"),
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
            "response_mask": keras.Input(shape=(None,), dtype="int32", name="response_mask"),
        }
        embeddings = self.embed_inputs(inputs["images"], inputs["token_ids"])
        padding_mask, ar_mask = self.sequence_masks(inputs["padding_mask"], inputs["response_mask"])
        hidden = self.decoder(embeddings, padding_mask, ar_mask)
        logits = self.decoder.logits(hidden[:, self.num_image_tokens:])
        super().__init__(inputs=inputs, outputs=logits, dtype=dtype, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.image_size = image_size
        self.decoder_config = decoder_config
        self.vit_config = dict(
            vit_patch_size=vit_patch_size,
            vit_hidden_dim=vit_hidden_dim,
            vit_num_layers=vit_num_layers,
            vit_num_heads=vit_num_heads,
            vit_intermediate_dim=vit_intermediate_dim,
            remat=bool(remat),
        )

    def __call__(self, inputs, *args, **kwargs):
        self._check_inputs(inputs)  # before Keras' input-spec check, with clearer messages
        return super().__call__(inputs, *args, **kwargs)

    def embed_inputs(self, images, token_ids):
        """`(B, N + L, D)`: projected image tokens (unscaled), then text embeddings."""
        image_tokens = self.vit(images)
        text = self.decoder.embed(token_ids)
        return ops.concatenate([ops.cast(image_tokens, text.dtype), text], axis=1)

    def sequence_masks(self, padding_mask, response_mask):
        """Text masks `(B, L)` -> `(padding_mask, ar_mask)` of the whole `(B, N + L)`
        sequence: image tokens are real (1) and in the prefix block (ar 0)."""
        padding_mask = ops.cast(padding_mask, "int32")
        ar_mask = ops.cast(response_mask, "int32")
        image = ops.ones_like(padding_mask[:, :1]) * ops.ones((1, self.num_image_tokens), "int32")
        return (
            ops.concatenate([image, padding_mask], axis=1),
            ops.concatenate([ops.zeros_like(image), ar_mask], axis=1),
        )

    def _check_inputs(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError(
                "PaliGemmaBackbone takes a dict with 'images', 'token_ids', 'padding_mask' and "
                f"'response_mask'; got {type(inputs).__name__}."
            )
        missing = {"images", "token_ids", "padding_mask", "response_mask"} - set(inputs)
        if missing:
            raise ValueError(f"PaliGemmaBackbone inputs lack {sorted(missing)}; got keys {sorted(inputs)}.")
        images = inputs["images"]
        expected = (self.image_size, self.image_size, 3)
        if len(images.shape) != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"Expected images of shape (batch, {self.image_size}, {self.image_size}, 3) in [-1, 1] "
                f"(this model's image_size); got shape {tuple(images.shape)}."
            )
        token_shape = tuple(inputs["token_ids"].shape)
        if len(token_shape) != 2:
            raise ValueError(f"Expected token_ids of shape (batch, length); got shape {token_shape}.")
        for name in ("padding_mask", "response_mask"):
            shape = tuple(inputs[name].shape)
            if shape != token_shape:
                raise ValueError(f"{name} must have the shape of token_ids {token_shape}; got {shape}.")
        if images.shape[0] is not None and token_shape[0] is not None and images.shape[0] != token_shape[0]:
            raise ValueError(
                f"images and token_ids disagree on the batch size: {images.shape[0]} vs {token_shape[0]}."
            )
        check_token_ids(inputs["token_ids"], self.vocabulary_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            image_size=self.image_size,
            **self.decoder_config,
            **self.vit_config,
        )
        return config


def pali_gemma_parameter_count(config):
    """Trainable parameters of a `PaliGemmaBackbone` config, without building it."""
    p = config.get("vit_patch_size", 14)
    w = config.get("vit_hidden_dim", 1152)
    m = config.get("vit_intermediate_dim", 4304)
    depth = config.get("vit_num_layers", 27)
    tokens = (config["image_size"] // p) ** 2
    block = 4 * (w * w + w) + 2 * w * m + m + w + 4 * w
    vision = (p * p * 3 + 1) * w + tokens * w + depth * block + 2 * w
    projector = (w + 1) * config["hidden_dim"]
    return vision + projector + gemma_parameter_count(config)
