"""Images, prompts and responses -> PaliGemma inputs, targets and loss weights.

Text layout (big_vision `configs/proj/paligemma/transfers/common.py`):

    tok(prefix, bos=yes) | tok("\\n") | tok(suffix, eos=yes)
    -> [BOS] prefix... "\\n" suffix... [EOS] [pad]...

- The separator "\\n" is tokenized on its own and appended after the prompt's
  ids (big_vision's `septok`), not as part of the prompt string: "prompt\\n"
  tokenized together could merge the newline with a trailing one of the prompt
  (Gemma has "\\n\\n" as one piece), which HF's processor does and big_vision
  does not.
- `response_mask` is big_vision's `mask_ar` of the text: 0 on BOS, prefix and
  separator (one bidirectional block with the image), 1 on suffix + EOS
  (causal) and, as big_vision pads it, 1 on padding (padding is excluded by
  `padding_mask` anyway).
- Loss weights (`mask_loss`) are 1 on the suffix tokens and EOS only.
- The sequence is packed to `sequence_length + 1` and cut from the right when
  too long (big_vision `tolen`; a long suffix loses its EOS); the model sees
  positions `[:-1]`, the targets are `[1:]`, the weights `mask_loss[1:]`.

For generation (`generate_preprocess`) only `[BOS] prefix "\\n"` is packed,
right-padded to `sequence_length`; `PaliGemmaCausalLM.generate` left-aligns it.
"""

import keras
import numpy as np
from keras import ops
from keras_hub.models import Preprocessor
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone
from keras_siglip.models.pali_gemma.pali_gemma_image_converter import PaliGemmaImageConverter
from keras_siglip.models.pali_gemma.pali_gemma_tokenizer import PaliGemmaTokenizer
from keras_siglip.utils.preset import PresetMixin

KEYS = ("images", "prompts", "responses")


def strip_after_eos(token_ids, eos_id, pad_id=0, keep_eos=False):
    """`(B, L)` ids with every token from the first EOS on (after it with
    `keep_eos`) set to `pad_id`. Static shapes, no loops."""
    token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
    is_eos = ops.cast(ops.equal(token_ids, eos_id), "int32")
    seen = ops.cumsum(is_eos, axis=-1)
    drop = seen - is_eos > 0 if keep_eos else seen > 0
    return ops.where(drop, ops.cast(pad_id, "int32"), token_ids)


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaCausalLMPreprocessor(PresetMixin, Preprocessor):
    """Raw images and texts -> `PaliGemmaCausalLM` inputs (see the module docstring).

    Args:
        tokenizer: a `PaliGemmaTokenizer`.
        image_converter: a `PaliGemmaImageConverter` at the backbone's
            `image_size` (resize, map [0, 255] to [-1, 1]); or, for a backbone
            with `input_format="naflex"`, a `NaFlexImageConverter(patch_size,
            max_num_patches)` (images of any size and aspect ratio -> patches).
        sequence_length: L, text positions the model sees (image tokens not
            counted).

    Call args:
        x: `{"images": ..., "prompts": ..., "responses": ...}`; "images" may
            be absent (already converted elsewhere); without "responses" the
            prompt-only layout of `generate_preprocess` is returned (no targets).
        y, sample_weight: must be None when "responses" are given (they are
            made here).

    Returns:
        `(x, y, sample_weight)`: `x = {"images": (B, H, W, 3) in [-1, 1],
        "token_ids", "padding_mask", "response_mask": (B, L) int32}` (NaFlex:
        `"patches"`, `"patch_coords"`, `"patch_mask"` instead of `"images"`),
        `y = (B, L)` next-token targets, `sample_weight = (B, L)` float32, 1 on
        the suffix targets and EOS. Works eagerly and inside `tf.data`.
    """

    backbone_cls = PaliGemmaBackbone
    tokenizer_cls = PaliGemmaTokenizer
    image_converter_cls = PaliGemmaImageConverter

    def __init__(self, tokenizer=None, image_converter=None, sequence_length=128, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = int(sequence_length)

    # === Packing ===

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("This preprocessor has no tokenizer; it cannot take texts.")
        return self.tokenizer

    def tokenize_ragged(self, texts):
        """`(B,)` strings -> ragged int32 `(B, None)` ids (no BOS/EOS)."""
        import tensorflow as tf

        ids = self._require_tokenizer()(tf.convert_to_tensor(texts))
        if isinstance(ids, (list, tuple)):  # keras-hub's eager (non-tf.data) path
            rows = [np.asarray(row, np.int32).reshape(-1) for row in ids]
            flat = np.concatenate(rows) if rows else np.zeros((0,), np.int32)
            return tf.RaggedTensor.from_row_lengths(
                tf.constant(flat, tf.int32), tf.constant([len(r) for r in rows], tf.int64)
            )
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        return tf.cast(ids, tf.int32)

    def pack(self, prompts, responses=None, length=None):
        """big_vision's packing of `[BOS] prompt "\\n" [response EOS]` (see the
        module docstring) to `length` (default `sequence_length`).

        Returns tf int32 `(token_ids, padding_mask, ar_mask, loss_mask)`, each
        `(B, length)`.
        """
        import tensorflow as tf

        tokenizer = self._require_tokenizer()
        length = self.sequence_length if length is None else int(length)
        prompt_ids = self.tokenize_ragged(prompts)
        batch = prompt_ids.nrows()

        def column(ids):
            values = tf.tile(tf.constant([ids], tf.int32), tf.stack([batch, 1]))
            return tf.RaggedTensor.from_tensor(values)

        pieces = [(column([tokenizer.start_token_id]), 0, 0), (prompt_ids, 0, 0),
                  (column(tokenizer.separator_ids), 0, 0)]
        if responses is not None:
            pieces += [(self.tokenize_ragged(responses), 1, 1), (column([tokenizer.end_token_id]), 1, 1)]
        ids = tf.concat([p for p, _, _ in pieces], axis=1)
        ar = tf.concat([tf.ones_like(p) * a for p, a, _ in pieces], axis=1)
        loss = tf.concat([tf.ones_like(p) * w for p, _, w in pieces], axis=1)
        shape = [None, length]
        return (
            ids.to_tensor(default_value=tokenizer.pad_token_id, shape=shape),
            tf.ones_like(ids).to_tensor(default_value=0, shape=shape),
            ar.to_tensor(default_value=1, shape=shape),
            loss.to_tensor(default_value=0, shape=shape),
        )

    def convert_images(self, images):
        if self.image_converter is None:
            raise ValueError("This preprocessor has no image_converter; it cannot take images.")
        return self.image_converter(images)

    def model_images(self, images):
        """Raw images -> the model's image inputs: `{"images": ...}`, or the
        NaFlex keys (`"patches"`, `"patch_mask"`, `"patch_coords"`) with a
        `NaFlexImageConverter` (for `input_format="naflex"` backbones)."""
        images = self.convert_images(images)
        return dict(images) if isinstance(images, dict) else {"images": images}

    @staticmethod
    def _split(x, name):
        if not isinstance(x, dict):
            raise ValueError(f"{name} takes a dict with the keys {KEYS}; got {type(x).__name__}.")
        unknown = set(x) - set(KEYS)
        if unknown:
            raise ValueError(f"{name} takes the keys {KEYS}; got unknown {sorted(unknown)}.")
        if "prompts" not in x:
            raise ValueError(f"{name} needs 'prompts' (use '' for none).")
        return x

    @staticmethod
    def _batched(texts):
        """`(texts as a rank-1 batch, whether the input was a single string)`."""
        import tensorflow as tf

        if texts is None:
            return None, False
        texts = tf.convert_to_tensor(texts)
        if texts.shape.rank == 0:
            return texts[None], True
        return texts, False

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        x = self._split(x, "PaliGemmaCausalLMPreprocessor")
        if "responses" not in x:
            return self.generate_preprocess(x)
        if y is not None or sample_weight is not None:
            raise ValueError(
                "PaliGemmaCausalLMPreprocessor makes the targets and loss weights from "
                "'responses'; do not pass `y` or `sample_weight`."
            )
        import tensorflow as tf

        prompts, single = self._batched(x["prompts"])
        responses, _ = self._batched(x["responses"])
        ids, padding, ar, loss = self.pack(prompts, responses, self.sequence_length + 1)
        outputs = {"token_ids": ids[:, :-1], "padding_mask": padding[:, :-1], "response_mask": ar[:, :-1]}
        targets, weights = ids[:, 1:], tf.cast(loss[:, 1:], tf.float32)
        if single:
            outputs = {k: v[0] for k, v in outputs.items()}
            targets, weights = targets[0], weights[0]
        if x.get("images") is not None:
            outputs.update(self.model_images(x["images"]))
        return keras.utils.pack_x_y_sample_weight(outputs, targets, weights)

    @preprocessing_function
    def generate_preprocess(self, x, sequence_length=None):
        """`{"images", "prompts"}` -> `{"images", "token_ids", "padding_mask"}`:
        `[BOS] prompt "\\n"` right-padded (or cut) to `sequence_length`."""
        x = self._split(x, "generate_preprocess")
        prompts, single = self._batched(x["prompts"])
        ids, padding, _, _ = self.pack(prompts, None, sequence_length or self.sequence_length)
        outputs = {"token_ids": ids, "padding_mask": padding}
        if single:
            outputs = {k: v[0] for k, v in outputs.items()}
        if x.get("images") is not None:
            outputs.update(self.model_images(x["images"]))
        return outputs

    def generate_postprocess(self, token_ids):
        """`(B, T)` generated ids -> B strings: the text before the first EOS
        (loc/seg tokens kept as `<locNNNN>` / `<segNNN>` text)."""
        tokenizer = self._require_tokenizer()
        ids = np.asarray(ops.convert_to_numpy(token_ids)).astype(np.int32)
        single = ids.ndim == 1
        ids = np.asarray(ops.convert_to_numpy(strip_after_eos(np.atleast_2d(ids), tokenizer.end_token_id,
                                                              tokenizer.pad_token_id)))
        rows = [[int(t) for t in row if t != tokenizer.pad_token_id] for row in ids]
        texts = tokenizer.detokenize(rows)
        if hasattr(texts, "numpy"):
            texts = texts.numpy().tolist()
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
        return texts[0] if single else texts

    def get_config(self):
        config = super().get_config()
        config.update(sequence_length=self.sequence_length)
        return config
