"""Raw images and captions -> CapPa inputs and targets."""

import keras
import numpy as np
from keras import ops
from keras_hub.layers import StartEndPacker
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip.models.cappa.cappa_backbone import CapPaBackbone
from keras_siglip.models.siglip.siglip_preprocessor import SigLIPPreprocessor, split_inputs

PAD_ID = 0
EOS_ID = 1


def strip_after_eos(token_ids, eos_id=EOS_ID, pad_id=PAD_ID, keep_eos=True):
    """`(B, L)` ids with every token after the first EOS set to `pad_id`
    (the EOS too unless `keep_eos`). Static shapes, no loops."""
    token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
    is_eos = ops.cast(ops.equal(token_ids, eos_id), "int32")
    seen = ops.cumsum(is_eos, axis=-1)  # >= 1 from the first EOS on
    drop = seen - is_eos > 0 if keep_eos else seen > 0
    return ops.where(drop, ops.cast(pad_id, "int32"), token_ids)


@keras.saving.register_keras_serializable(package="keras_siglip")
class CapPaPreprocessor(SigLIPPreprocessor):
    """Raw images and captions -> `CapPaCaptioner` inputs and targets.

    Captions are normalised and tokenized by a `SigLIPTokenizer` (no BOS), end
    with a "sticky" EOS (id 1, kept when truncating) and are right-padded with
    0 to `sequence_length` (big_vision `tokenize(eos="sticky")`, pad 0, whatever
    the tokenizer's own pad token). Images go through a `SigLIPImageConverter`.

    Call args:
        x: `{"images": ..., "texts": ...}`, a batch of strings or an image batch.
        y, sample_weight: optional, passed through.

    Returns:
        `x = {"images": (B, H, W, 3) float in [-1, 1], "token_ids": (B, L)
        int32}` (the keys present in the input). With captions and no `y`,
        `(x, y)` with `y = token_ids`: position t of the decoder predicts
        `token_ids[:, t]` (the decoder shifts its inputs itself).
    """

    backbone_cls = CapPaBackbone

    def build(self, input_shape):
        if self.tokenizer is not None:
            self.packer = StartEndPacker(
                sequence_length=self.sequence_length,
                end_value=EOS_ID,
                pad_value=PAD_ID,
                return_padding_mask=False,
            )
        self.built = True

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        x = split_inputs(x, "CapPaPreprocessor")
        outputs = {}
        if "images" in x:
            outputs.update(self.model_images(x["images"]))
        if "texts" in x:
            outputs["token_ids"] = self.pack_texts(x["texts"])
            if y is None:
                y = outputs["token_ids"]
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def tokenize_ragged(self, texts):
        """`(B,)` strings -> ragged int32 `(B, None)` ids (no EOS, no padding)."""
        import tensorflow as tf

        ids = self.tokenizer(tf.convert_to_tensor(texts))
        if isinstance(ids, (list, tuple)):  # keras-hub's eager (non-tf.data) path
            return tf.ragged.constant([list(row) for row in ids], dtype=tf.int32, ragged_rank=1)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        return tf.cast(ids, tf.int32)

    def detokenize(self, token_ids):
        """`(B, L)` generated ids -> list of B strings (text up to the first EOS)."""
        if self.tokenizer is None:
            raise ValueError("This preprocessor has no tokenizer; it cannot detokenize.")
        ids = np.asarray(ops.convert_to_numpy(strip_after_eos(token_ids, keep_eos=False)))
        texts = self.tokenizer.detokenize(ids)
        if hasattr(texts, "numpy"):
            texts = texts.numpy().tolist()
        return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
