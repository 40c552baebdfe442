import keras
from keras_hub.layers import StartEndPacker
from keras_hub.models import Preprocessor
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.models.siglip.siglip_image_converter import SigLIPImageConverter
from keras_siglip.models.siglip.siglip_tokenizer import SigLIPTokenizer, check_texts
from keras_siglip.utils.preset import PresetMixin


def split_inputs(x, name):
    """`x` as `{"images"?, "texts"?}`: a bare array is images or texts by dtype."""
    if not isinstance(x, dict):
        x = {"texts": x} if _is_text(x) else {"images": x}
    unknown = set(x) - {"images", "texts"}
    if unknown:
        raise ValueError(f"{name} takes the keys 'images' and 'texts'; got {sorted(unknown)}.")
    return x


def _is_text(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return isinstance(x, (str, bytes)) or (
            isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (str, bytes))
        )
    kind = getattr(dtype, "kind", None)  # numpy dtypes
    return str(dtype) in ("<dtype: 'string'>", "string") or (kind is not None and kind in "SUO")


def _is_empty_batch(texts):
    if isinstance(texts, (list, tuple)):
        return len(texts) == 0
    shape = getattr(texts, "shape", None)
    return shape is not None and len(shape) == 1 and shape[0] == 0


def _zeros(shape):
    """int32 zeros: a TensorFlow tensor inside tf.data / keras-hub's TF
    workflow, else a backend tensor."""
    from keras_hub.src.utils.tensor_utils import in_tf_function

    if in_tf_function():
        import tensorflow as tf

        return tf.zeros(shape, tf.int32)
    return keras.ops.zeros(shape, "int32")


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPPreprocessor(PresetMixin, Preprocessor):
    """Raw images and texts -> `SigLIPBackbone` inputs; runs in tf.data and eagerly.

    Texts are normalised by the tokenizer, tokenized without BOS, end with a
    "sticky" EOS (kept as the last real token when truncating) and are
    right-padded with the tokenizer's pad token to `sequence_length` (EOS for
    SigLIP 1, `<pad>` = 0 for SigLIP 2). Any length works, including "".

    Call args:
        x: `{"images": ..., "texts": ...}` (either key may be absent), or a
            batch of strings (texts only), or an image batch (images only).

    Returns:
        `{"images": (B, H, W, 3) float in [-1, 1], "token_ids": (B, L) int32}`
        with the keys present in the input; with a `NaFlexImageConverter`,
        `"patches"`, `"patch_mask"`, `"patch_coords"` instead of `"images"`.
    """

    backbone_cls = SigLIPBackbone
    tokenizer_cls = SigLIPTokenizer
    image_converter_cls = SigLIPImageConverter

    def __init__(self, tokenizer=None, image_converter=None, sequence_length=64, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = sequence_length

    def build(self, input_shape):
        if self.tokenizer is not None:
            self.packer = StartEndPacker(
                sequence_length=self.sequence_length,
                end_value=self.tokenizer.end_token_id,
                pad_value=self.tokenizer.pad_token_id,
                return_padding_mask=False,
            )
        self.built = True

    def __call__(self, x, *args, **kwargs):
        # Before keras-hub converts the inputs to tensors (with foreign errors).
        # Only the `texts` key: subclasses take other keys (boxes, prompts, ...).
        texts = x.get("texts") if isinstance(x, dict) else (x if _is_text(x) else None)
        if texts is not None or (isinstance(x, dict) and "texts" in x):
            check_texts(texts)
        return super().__call__(x, *args, **kwargs)

    def pack_texts(self, texts):
        """Texts -> `(B, sequence_length)` int32 token ids (`(sequence_length,)` for one string)."""
        if self.tokenizer is None:
            raise ValueError("This preprocessor has no tokenizer; it cannot take texts.")
        if not self.built:
            self.build(None)
        if _is_empty_batch(texts):  # the packer would take an empty batch for one empty text
            return _zeros((0, self.sequence_length))
        return self.packer(self.tokenizer(texts), add_end_value=True)

    def convert_images(self, images):
        if self.image_converter is None:
            raise ValueError("This preprocessor has no image_converter; it cannot take images.")
        return self.image_converter(images)

    def model_images(self, images):
        """Images -> the model's image inputs: `{"images": ...}`, or the NaFlex
        keys (`"patches"`, `"patch_mask"`, `"patch_coords"`) with a
        `NaFlexImageConverter`."""
        images = self.convert_images(images)
        return images if isinstance(images, dict) else {"images": images}

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        x = split_inputs(x, "SigLIPPreprocessor")
        outputs = {}
        if "images" in x:
            outputs.update(self.model_images(x["images"]))
        if "texts" in x:
            outputs["token_ids"] = self.pack_texts(x["texts"])
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(sequence_length=self.sequence_length)
        return config
