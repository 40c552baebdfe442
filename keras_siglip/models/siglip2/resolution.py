"""SigLIP 2 stage C: continue training at another resolution or patch size.

The fixed-resolution variants take the checkpoint at 95% of training, resize
the learned position grid to the target grid (and for the /14 models the patch
embedding from 16 to 14 with FlexiViT's pseudo-inverse resize), and train the
last 5% at the target resolution with every loss. `at_resolution` makes that
starting model from a trained backbone. The NaFlex variants (from 90%) need no
new weights (the NaFlex image tower reads the same ones); their schedule's
last 10% is stretched 3.75x (`StretchedSchedule`), the sequence length drawn
per batch from `NAFLEX_SEQUENCE_LENGTHS`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

NAFLEX_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)
NAFLEX_STRETCH = 3.75


def _bilinear_resize_matrix(old, new):
    """`(new*new, old*old)`: TensorFlow's bilinear resize (no antialias) of
    `(old, old)` to `(new, new)` as a matrix (big_vision FlexiViT's)."""
    basis = np.eye(old * old, dtype=np.float32).reshape(old * old, old, old, 1)
    resized = tf.image.resize(basis, (new, new), method="bilinear").numpy()
    return resized.reshape(old * old, new * new).T.astype(np.float64)


def pi_resize_patch_kernel(kernel, new_patch_size):
    """FlexiViT's pseudo-inverse resize of a patch-embedding kernel.

    Args:
        kernel: `(P, P, C, W)` (a `Dense` kernel over (py, px, c)-ordered
            patches reshaped), numpy.
        new_patch_size: P'.

    Returns:
        `(P', P', C, W)` float32: `pinv(B^T) @ w` per input channel and output
        unit, with `B` the bilinear resize of P x P patches to P' x P'. Growing
        the patch keeps every token exactly (`<resize(x), w'> = <x, w>`);
        shrinking it is the least-squares best.
    """
    kernel = np.asarray(kernel, np.float64)
    size = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != size:
        raise ValueError(f"Expected a (P, P, C, W) patch kernel; got shape {kernel.shape}.")
    if new_patch_size == size:
        return kernel.astype(np.float32)
    resize = _bilinear_resize_matrix(size, new_patch_size)  # (P'^2, P^2)
    flat = kernel.reshape(size * size, -1)  # (P^2, C*W)
    resized = np.linalg.pinv(resize.T) @ flat  # (P'^2, C*W)
    return resized.reshape(new_patch_size, new_patch_size, *kernel.shape[2:]).astype(np.float32)


def at_resolution(backbone, image_size, patch_size=None):
    """A `SigLIPBackbone` for continued training at `image_size` (and
    `patch_size`): the same weights, the position table resized to the new
    grid (as the model resizes it at run time) and, for a new patch size, the
    patch embedding PI-resized. Fixed-resolution image towers only."""
    from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
    from keras_siglip.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder

    from keras_siglip.utils.tensors import refuse_quantized

    vision = backbone.vision_encoder
    refuse_quantized(backbone, "at_resolution")
    if getattr(vision, "input_format", "images") != "images":
        raise ValueError("at_resolution adapts fixed-resolution towers; a NaFlex tower reads the same "
                         "weights at every sequence length.")
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    patch_size = int(patch_size or vision.patch_size)
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch_size}.")
    config = vision.get_config()
    config.update(image_size=image_size, patch_size=patch_size)
    new_vision = SigLIPVisionEncoder.from_config(config)
    new = SigLIPBackbone(new_vision, backbone.text_encoder.__class__.from_config(backbone.text_encoder.get_config()),
                         temperature_init=backbone.temperature_init, bias_init=backbone.bias_init,
                         dtype=backbone.dtype_policy)
    new.text_encoder.set_weights(backbone.text_encoder.get_weights())
    new.contrastive_head.set_weights(backbone.contrastive_head.get_weights())
    old_vit, new_vit = vision.vit, new_vision.vit
    grid = new_vit.grid_size
    table = ops.convert_to_numpy(old_vit.position_embedding.grid(grid)).reshape(*grid, -1)
    kernel = ops.convert_to_numpy(old_vit.embedding.kernel)
    channels, width = old_vit.num_channels, old_vit.width
    kernel = kernel.reshape(old_vit.patch_size, old_vit.patch_size, channels, width)
    kernel = pi_resize_patch_kernel(kernel, patch_size).reshape(-1, width)
    for old_layer, new_layer in ((old_vit.encoder, new_vit.encoder), (old_vit.map_head, new_vit.map_head),
                                 (old_vit.head, new_vit.head)):
        if old_layer is not None:
            new_layer.set_weights(old_layer.get_weights())
    new_vit.embedding.set_weights([kernel, ops.convert_to_numpy(old_vit.embedding.bias)])
    new_vit.position_embedding.embeddings.assign(table)
    if getattr(old_vit, "cls_token", None) is not None:
        new_vit.cls_token.assign(old_vit.cls_token)
    return new


@keras.saving.register_keras_serializable(package="keras_siglip")
class StretchedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` up to `start_step`, then its remainder `factor` times slower
    (the NaFlex continuation: the last 10% of the schedule stretched 3.75x)."""

    def __init__(self, schedule, start_step, factor=NAFLEX_STRETCH):
        if factor <= 0:
            raise ValueError(f"factor must be positive; got {factor}.")
        self.schedule = schedule
        self.start_step = int(start_step)
        self.factor = float(factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        stretched = self.start_step + (step - self.start_step) / self.factor
        return self.schedule(ops.where(step < self.start_step, step, stretched))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "start_step": self.start_step, "factor": self.factor}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)
