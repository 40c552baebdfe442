import keras
import numpy as np
from keras_hub.layers import ImageConverter

from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.utils.images import check_raw_images
from keras_siglip.utils.preset import PresetMixin


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPImageConverter(PresetMixin, ImageConverter):
    """Resize to the model's resolution and map pixel values to [-1, 1].

    Accepts `(H, W, 3)` or `(B, H, W, 3)` images of any size, or a list of
    `(H, W, 3)` images of different sizes (a folder of photos; each is
    resized alone), uint8 or float with values in [0, 255], resized in float32
    (no rounding back to uint8; big_vision truncates to uint8 after resizing:
    < 1 grey level apart). The aspect ratio is squashed, not cropped (as
    big_vision `resize(RES)` and HF's processor do). An empty batch (or list)
    gives `(0, H, W, 3)`.

    Input scale: called eagerly, it raises a ValueError on a float image whose
    maximum lies in (0, 1] (a [0, 1] image would come out nearly black:
    multiply by 255 or pass uint8), on values below 0 or above 255 (e.g. images
    already preprocessed to [-1, 1], or 16-bit values), on NaN / inf (naming
    the image's index) and on bool images. Inside `tf.data` or a traced
    function only the dtype and shape are checked
    (`keras_siglip.utils.images.check_raw_images`).

    Args:
        image_size: `(H, W)` output size.
        interpolation, antialias: `"bilinear"` without antialias reproduces
            big_vision's preprocessing; HF's processor is `"bicubic"` with
            antialias. Converted checkpoints carry their source's choice.
    """

    backbone_cls = SigLIPBackbone  # lets `from_preset` find this class in a SigLIP preset

    def __init__(
        self,
        image_size=(224, 224),
        scale=1.0 / 127.5,
        offset=-1.0,
        interpolation="bilinear",
        antialias=False,
        crop_to_aspect_ratio=False,
        **kwargs,
    ):
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            **kwargs,
        )

    def call(self, inputs):
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        if isinstance(images, (list, tuple)) and len(images) == 0:
            images = np.zeros((0, 1, 1, 3), "float32")  # what an empty batch array gives
            inputs = {**inputs, "images": images} if isinstance(inputs, dict) else images
        check_raw_images(images, type(self).__name__)
        if _different_sizes(images) and not isinstance(inputs, dict):
            # A list of photos of different sizes: each is resized alone (a batch is resized per image too).
            return keras.ops.concatenate([self.call(_one_image(image, index, type(self).__name__))
                                          for index, image in enumerate(images)], axis=0)
        shape = getattr(images, "shape", None)
        if shape is not None and (len(shape) not in (3, 4) or shape[-1] != 3):
            raise ValueError(
                "Expected RGB images of shape (height, width, 3) or (batch, height, "
                f"width, 3); got shape {tuple(shape)}. Convert grayscale or RGBA "
                "images to RGB first."
            )
        if shape is not None and 0 in tuple(shape)[-3:-1]:
            raise ValueError(f"{type(self).__name__} got an empty image: shape {tuple(shape)}.")
        # Resize in float: uint8 inputs would otherwise be rounded after the
        # resize on some paths (eager) and not on others (tf.data).
        images = keras.ops.cast(images, "float32") if not self._use_tf_workflow() else _tf_float(images)
        outputs = super().call({**inputs, "images": images} if isinstance(inputs, dict) else images)
        if isinstance(outputs, dict):
            return {**outputs, "images": self._clip_to_pixel_range(outputs["images"])}
        return self._clip_to_pixel_range(outputs)

    def _clip_to_pixel_range(self, images):
        """Clip to what pixels in [0, 255] map to. Bicubic (and Lanczos)
        resizing overshoots at sharp edges (by up to 36 grey levels on
        natural-looking images); HF's processor and big_vision resize in uint8,
        which clips. Bilinear never overshoots, so this changes nothing there."""
        scale = np.broadcast_to(np.asarray(1.0 if self.scale is None else self.scale, "float32"), (3,))
        offset = np.broadcast_to(np.asarray(0.0 if self.offset is None else self.offset, "float32"), (3,))
        ends = np.stack([offset, 255.0 * scale + offset])  # (2, 3): [0, 255] under the affine map
        low, high = ends.min(axis=0), ends.max(axis=0)
        if self._use_tf_workflow():
            import tensorflow as tf

            return tf.clip_by_value(images, tf.cast(low, images.dtype), tf.cast(high, images.dtype))
        low, high = (keras.ops.cast(bound, images.dtype) for bound in (low, high))
        return keras.ops.minimum(keras.ops.maximum(images, low), high)


def _different_sizes(images):
    return isinstance(images, (list, tuple)) and len({tuple(np.shape(image)) for image in images}) > 1


def _one_image(image, index, where):
    """`image` of a list as a batch of one; a clear error unless `(H, W, 3)`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: image {index} of the list has shape {image.shape}; expected (height, width, 3) "
                         "RGB. Convert grayscale or RGBA images to RGB first.")
    return image[None]


def _tf_float(images):
    import tensorflow as tf

    return tf.cast(images, tf.float32)
