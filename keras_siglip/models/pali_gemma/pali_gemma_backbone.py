"""PaliGemma 1 and 2: the shared ViT (So400m/14) + a Gemma 1 / Gemma 2 decoder.

Assembly (big_vision `models/proj/paligemma/paligemma.py`, HF `PaliGemmaModel`):
every patch token of the ViT (after `encoder_norm`) goes through the Dense `head`
(`pooling="none"`, `num_classes=hidden_dim`: PaliGemma's projector, with bias),
and the sequence `[image tokens, embed(text)]` enters Gemma. Only text embeddings
are multiplied by `sqrt(hidden_dim)`; image tokens are not (HF scatters the
projected features into the already scaled `inputs_embeds`; big_vision passes
them as an unscaled prefix). Attention is prefix-LM: image + prefix tokens see
each other fully, the suffix is causal (`keras_siglip.layers.gemma`).

NaFlex image tower (`input_format="naflex"`, SigLIP 2's native aspect ratio):
the image prefix has `max_num_patches` slots filled from `"patches"`,
`"patch_coords"` and `"patch_mask"` (a `NaFlexImageConverter`), the learned
position grid resized per image as in SigLIP 2. Padding slots are moved before
the real patches (their order kept) and masked out as Gemma keys, so no real
token ever attends to them: their content cannot change any logit, and since
RoPE sees only position differences, the logits do not depend on how many
padding slots there are. The same weights run both formats.
"""

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

from keras_siglip.distribution import pali_gemma_layout_map
from keras_siglip.layers.gemma import GemmaDecoder
from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.models.cappa.cappa_backbone import ENCODER_FORMATS, encoder_input
from keras_siglip.models.pali_gemma.pali_gemma_generation import left_align
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import check_token_ids


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaBackbone(PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
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
        remat: rematerialise every ViT and Gemma block in the backward pass.
        input_format: `"images"` (fixed resolution, as released) or `"naflex"`
            (NaFlex patches; as `CapPaBackbone`'s `input_format`). With
            NaFlex, `image_size // vit_patch_size` is the learned position
            grid, resized to each image's patch grid.
        max_num_patches: NaFlex only: N, the image prefix's slots (default
            the position grid's size, `(image_size // vit_patch_size) ** 2`).

    Inputs:
        `"images"`: `(B, image_size, image_size, 3)` float in [-1, 1]; with
            `input_format="naflex"` instead `"patches"` `(B, N, P*P*3)`,
            `"patch_coords"` `(B, N, 2)` int (y, x) and `"patch_mask"` `(B, N)`
            (1 = real patch), N = `max_num_patches`.
        `"token_ids"`: `(B, L)` int text ids `[BOS, prefix..., "\\n", suffix..., EOS, pad...]`.
        `"padding_mask"`: `(B, L)`, 1 for real text tokens.
        `"response_mask"`: `(B, L)`, 1 on the suffix (causal), 0 on the prefix
            (full attention with the image); big_vision's `mask_ar` of the text.

    Output:
        `(B, L, V)` logits of the text positions (position t predicts token
        t + 1), as big_vision's `text_logits`.

    `embed_inputs` and `sequence_masks` give the `(B, N + L, ...)` decoder
    inputs for `decoder.call_with_cache` (generation); `image_prefix` gives the
    image tokens and their `(B, N)` mask.

    Example (NaFlex):
    ```python
    backbone = PaliGemmaBackbone(**config, input_format="naflex", max_num_patches=256)
    converter = keras_siglip.layers.NaFlexImageConverter(14, 256)
    x = {**converter(images), "token_ids": ..., "padding_mask": ..., "response_mask": ...}
    logits = backbone(x)
    ```
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
        input_format="images",
        max_num_patches=None,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(image_size, int) or image_size < vit_patch_size:
            raise ValueError(
                f"image_size must be an int of at least one {vit_patch_size}px patch; got {image_size!r}."
            )
        if input_format not in ENCODER_FORMATS:
            raise ValueError(f"input_format must be one of {ENCODER_FORMATS}; got {input_format!r}.")
        grid = image_size // vit_patch_size
        if input_format == "images":
            if max_num_patches is not None:
                raise ValueError("max_num_patches applies to input_format='naflex' only.")
        else:
            max_num_patches = grid * grid if max_num_patches is None else max_num_patches
            if isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int) or max_num_patches < 1:
                raise ValueError(f"max_num_patches must be a positive int; got {max_num_patches!r}.")
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
        self.decoder = GemmaDecoder(vocabulary_size, **decoder_config, remat=remat, name="gemma", dtype=dtype)
        self.vit.build((None, image_size, image_size, 3))
        self.decoder.build()
        self.input_format = input_format
        self.max_num_patches = max_num_patches
        self.num_image_tokens = grid * grid if input_format == "images" else max_num_patches

        if input_format == "images":
            inputs = {"images": keras.Input(shape=(image_size, image_size, 3), name="images")}
        else:  # NaFlex keys (`encoder_input_spec`'s), with the static slot count N
            patch_dim = vit_patch_size * vit_patch_size * 3
            inputs = {
                "patches": keras.Input(shape=(max_num_patches, patch_dim), name="patches"),
                "patch_coords": keras.Input(shape=(max_num_patches, 2), dtype="int32", name="patch_coords"),
                "patch_mask": keras.Input(shape=(max_num_patches,), dtype="int32", name="patch_mask"),
            }
        inputs.update(
            token_ids=keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            padding_mask=keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
            response_mask=keras.Input(shape=(None,), dtype="int32", name="response_mask"),
        )
        image_tokens, image_mask = self.image_prefix(inputs)
        text = self.decoder.embed(inputs["token_ids"])
        embeddings = ops.concatenate([ops.cast(image_tokens, text.dtype), text], axis=1)
        padding_mask, ar_mask = self.sequence_masks(inputs["padding_mask"], inputs["response_mask"], image_mask)
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

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a preset folder, URI or name (a converted Hugging Face or big_vision
        checkpoint is converted on the fly). A PaliGemma 1 / 2 card name
        (`keras-siglip presets`, `PALI_GEMMA_PRESETS`) downloads the weights
        (gated: accept the licence and set `HF_TOKEN`) and converts them once
        (`keras_siglip.hub`); with `load_weights=False` it builds the
        architecture with random weights, offline (kwargs override the card's
        config, e.g. `input_format="naflex"`)."""
        from keras_siglip.presets.pali_gemma import PALI_GEMMA_PRESETS

        if isinstance(preset, str) and preset in PALI_GEMMA_PRESETS and not load_weights:
            return cls(**{**PALI_GEMMA_PRESETS[preset]["config"], **kwargs})
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    @staticmethod
    def get_layout_map(device_mesh, model_axis="model", data_axis="batch", num_key_value_heads=None):
        """Sharding of every weight for `keras.distribution.ModelParallel`:
        data + model parallel PaliGemma (10B / 28B do not fit one accelerator).

        ```python
        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], keras.distribution.list_devices())
        layout_map = PaliGemmaBackbone.get_layout_map(mesh)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
        model = PaliGemmaCausalLM.from_preset("paligemma2_10b_mix_448")  # built sharded
        ```

        Why: in float32 the 10B / 28B weights alone take 39 / 111 GB (Adam
        triples that), more than one accelerator holds; splitting every big
        kernel over both axes divides that memory by the number of devices,
        while the model axis also divides each layer's matmuls (no gather of
        those weights over it). Every big kernel is split on both axes, as keras-hub's
        `GemmaBackbone.get_layout_map` (the Gemma team's training layout) and
        `SigLIPBackbone.get_layout_map` do:
        - `model_axis` (tensor parallel, each device computes its share): the
          attention heads (Gemma and ViT query / key / value / output), the MLP
          hidden units (Gemma `ffw_gating`, `ffw_gating_2`, `ffw_linear`; ViT
          `mlp/dense_0`, `dense_1`), the vocabulary of the tied token embedding,
          and the output units of the ViT patch embedding and the projector
          (`vit/head`).
        - `data_axis` (FSDP, ZeRO-3 style: stored split, gathered for use): the
          other (width / `hidden_dim`) dimension of the same kernels. The patch
          embedding's 588 inputs are not split (588 does not divide by 8).
        - Replicated, declared explicitly (`keras_siglip.distribution.
          PALI_GEMMA_REPLICATED`): biases, LayerNorm / RMSNorm scales (Gemma 2's
          post norms included), the position grid and LoRA factors; all small.

        Either axis may be None (pure FSDP on a 1-D data mesh, or pure tensor
        parallelism). Every split dimension must divide by its axis' size; in
        particular the model axis must divide the ViT's 16 heads and 4304 MLP
        units and Gemma's query heads. Key / value heads (PaliGemma 2: 4 / 8 / 16
        for 3B / 10B / 28B) are split too unless `num_key_value_heads` is given
        and the model axis does not divide it (PaliGemma 1 has one): then those
        small kernels are split over the data axis only.
        """
        return pali_gemma_layout_map(device_mesh, model_axis, data_axis, num_key_value_heads)

    def __call__(self, inputs, *args, **kwargs):
        self._check_inputs(inputs)  # before Keras' input-spec check, with clearer messages
        return super().__call__(inputs, *args, **kwargs)

    def image_prefix(self, images):
        """`(tokens (B, N, D), mask (B, N) int32)`: the projected image tokens
        (unscaled) and which are real.

        `images`: `(B, H, W, 3)` in [-1, 1], or a dict with `"images"` or the
        NaFlex keys (model inputs may be passed whole). Whole images: N =
        `num_image_tokens`, all real. NaFlex: N = the patch slots, padding
        moved first (`left_align`, real patches keep their order), mask 0 there.
        """
        images = encoder_input(images)
        tokens = self.vit(images)
        if not isinstance(images, dict):
            return tokens, ops.ones_like(ops.cast(tokens[:, :, 0], "int32"))
        mask = ops.cast(ops.greater(ops.cast(images["patch_mask"], "int32"), 0), "int32")
        return left_align(tokens, mask)

    def embed_inputs(self, images, token_ids):
        """`(B, N + L, D)`: projected image tokens (unscaled), then text embeddings
        (NaFlex: padding patches first; see `image_prefix` for their mask)."""
        image_tokens, _ = self.image_prefix(images)
        text = self.decoder.embed(token_ids)
        return ops.concatenate([ops.cast(image_tokens, text.dtype), text], axis=1)

    def sequence_masks(self, padding_mask, response_mask, image_mask=None):
        """Text masks `(B, L)` -> `(padding_mask, ar_mask)` of the whole `(B, N + L)`
        sequence: image tokens are in the prefix block (ar 0) and real (1), or
        as `image_mask` `(B, N)` says (NaFlex: `image_prefix`'s mask)."""
        padding_mask = ops.cast(padding_mask, "int32")
        ar_mask = ops.cast(response_mask, "int32")
        if image_mask is None:
            image = ops.ones_like(padding_mask[:, :1]) * ops.ones((1, self.num_image_tokens), "int32")
        else:
            image = ops.cast(image_mask, "int32")
        return (
            ops.concatenate([image, padding_mask], axis=1),
            ops.concatenate([ops.zeros_like(image), ar_mask], axis=1),
        )

    def _check_inputs(self, inputs):
        image_keys = ("images",) if self.input_format == "images" else ("patches", "patch_coords", "patch_mask")
        if not isinstance(inputs, dict):
            raise ValueError(
                f"PaliGemmaBackbone takes a dict with {', '.join(repr(k) for k in image_keys)}, 'token_ids', "
                f"'padding_mask' and 'response_mask'; got {type(inputs).__name__}."
            )
        missing = {*image_keys, "token_ids", "padding_mask", "response_mask"} - set(inputs)
        if missing:
            hint = ""
            if "images" in inputs and self.input_format == "naflex":
                hint = " This backbone takes NaFlex patches (input_format='naflex'): use a NaFlexImageConverter."
            elif "patches" in inputs and self.input_format == "images":
                hint = " This backbone takes whole images (input_format='images'), not NaFlex patches."
            raise ValueError(f"PaliGemmaBackbone inputs lack {sorted(missing)}; got keys {sorted(inputs)}.{hint}")
        if self.input_format == "images":
            images = inputs["images"]
            expected = (self.image_size, self.image_size, 3)
            if len(images.shape) != 4 or tuple(images.shape[1:]) != expected:
                raise ValueError(
                    f"Expected images of shape (batch, {self.image_size}, {self.image_size}, 3) in [-1, 1] "
                    f"(this model's image_size); got shape {tuple(images.shape)}."
                )
        else:
            images = inputs["patches"]
            patch_dim = self.vit.patch_size ** 2 * 3
            slots = images.shape[1] if len(images.shape) == 3 else None
            if len(images.shape) != 3 or images.shape[2] != patch_dim or slots not in (None, self.max_num_patches):
                raise ValueError(
                    f"Expected NaFlex patches of shape (batch, {self.max_num_patches}, {patch_dim}) (this "
                    f"model's max_num_patches); got shape {tuple(images.shape)}."
                )
            for name, rank in (("patch_coords", 3), ("patch_mask", 2)):
                shape = tuple(inputs[name].shape)
                if len(shape) != rank or shape[:2] != tuple(images.shape[:2]):
                    raise ValueError(f"{name} must match patches {tuple(images.shape[:2])}; got shape {shape}.")
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
        check_model_images(inputs, "PaliGemmaBackbone")

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            image_size=self.image_size,
            **self.decoder_config,
            **self.vit_config,
        )
        if self.input_format != "images":  # fixed-resolution configs stay as they were
            config.update(input_format=self.input_format, max_num_patches=self.max_num_patches)
        return config


def image_batch(images):
    """Model-ready images -> `(backend tensors, batch size)` with a batch axis:
    `(B, H, W, 3)` float32 images (one `(H, W, 3)` image gets one), or a NaFlex
    dict (`"patches"` float32, `"patch_coords"` / `"patch_mask"` int32; one
    unbatched image's `(N, ...)` arrays get a batch axis)."""
    if isinstance(images, dict):
        patches = np.asarray(ops.convert_to_numpy(images["patches"]), dtype="float32")
        single = patches.ndim == 2
        out = {}
        for key in ("patches", "patch_coords", "patch_mask"):
            value = np.asarray(ops.convert_to_numpy(images[key]), dtype="float32" if key == "patches" else "int32")
            out[key] = ops.convert_to_tensor(value[None] if single else value)
        return out, len(patches) if not single else 1
    images = np.asarray(ops.convert_to_numpy(images), dtype="float32")
    if images.ndim == 3:
        images = images[None]
    return ops.convert_to_tensor(images), len(images)
