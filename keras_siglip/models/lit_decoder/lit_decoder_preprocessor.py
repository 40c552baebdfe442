"""Images, task prompts and targets -> LiT-decoder sequences with a loss mask."""

import keras
import numpy as np
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip.models.cappa.cappa_preprocessor import EOS_ID, PAD_ID, CapPaPreprocessor
from keras_siglip.models.lit_decoder.lit_decoder_backbone import LiTDecoderBackbone


@keras.saving.register_keras_serializable(package="keras_siglip")
class LiTDecoderPreprocessor(CapPaPreprocessor):
    """Raw images, prompts and targets -> `LiTDecoder` inputs and targets.

    Every task is a text prompt and a text target (LiT-decoder: the task is
    named by its prompt, e.g. "class", "caption", "what color is the shape";
    classification targets are class names). The sequence is

        prompt tokens, target tokens, EOS, padding (0) to `sequence_length`

    and the loss covers the target and EOS only (the prompt is teacher-forced,
    not scored). Prompts keep at most `sequence_length - 2` tokens; a target
    that does not fit is truncated (EOS always fits).

    Args:
        tokenizer: a `SigLIPTokenizer`.
        image_converter: a `SigLIPImageConverter` or `NaFlexImageConverter`.
        sequence_length: L, prompt + target + EOS.

    Call args:
        x: dict with `"prompts"` `(B,)` strings (or one for the whole batch),
            `"targets"` `(B,)` strings and optional `"images"`. Batched only.

    Returns:
        `(x, y)`: `x = {"images" (or the NaFlex keys), "token_ids": (B, L)
        int32}`, `y` = `token_ids` with the prompt positions set to 0 (the pad
        id `CaptioningLoss` ignores). Runs in tf.data and eagerly.
    """

    backbone_cls = LiTDecoderBackbone

    def build_sequences(self, prompts, targets):
        """`(token_ids, loss_mask)`, `(B, L)` int32 and bool (TensorFlow)."""
        targets = tf.reshape(tf.convert_to_tensor(targets), [-1])
        prompts = tf.broadcast_to(tf.reshape(tf.convert_to_tensor(prompts), [-1]), tf.shape(targets))
        length = self.sequence_length
        prompt = self.tokenize_ragged(prompts)[:, : length - 2]
        target = self.tokenize_ragged(targets)
        ids = tf.concat([prompt, target], axis=1)[:, : length - 1]
        scored = tf.concat([tf.zeros_like(prompt), tf.ones_like(target)], axis=1)[:, : length - 1]
        eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(targets)[0], 1], EOS_ID))
        shape = [None, length]
        token_ids = tf.concat([ids, eos], axis=1).to_tensor(PAD_ID, shape=shape)
        loss_mask = tf.concat([scored, tf.ones_like(eos)], axis=1).to_tensor(0, shape=shape)
        return token_ids, tf.cast(loss_mask, tf.bool)

    def prompt_ids(self, prompts):
        """Generation prompts, eagerly: numpy int32 `(B, P)` right-padded with
        0, P = the longest prompt (at most `sequence_length - 2` tokens)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenize_ragged(tf.constant(prompts))[:, : self.sequence_length - 2]
        return np.asarray(ids.to_tensor(PAD_ID).numpy(), np.int32).reshape(len(prompts), -1)

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        if not isinstance(x, dict) or "prompts" not in x or "targets" not in x:
            raise ValueError("LiTDecoderPreprocessor takes a dict with 'prompts', 'targets' and optional 'images'.")
        unknown = set(x) - {"images", "prompts", "targets"}
        if unknown:
            raise ValueError(f"Unknown LiTDecoderPreprocessor keys {sorted(unknown)}.")
        token_ids, loss_mask = self.build_sequences(x["prompts"], x["targets"])
        outputs = {"token_ids": token_ids}
        if "images" in x:
            outputs.update(self.model_images(x["images"]))
        if y is None:
            y = tf.where(loss_mask, token_ids, tf.zeros_like(token_ids))
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)
