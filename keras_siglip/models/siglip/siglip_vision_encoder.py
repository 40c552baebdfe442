import keras
from keras_hub.models import Backbone

from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.utils.preset import PresetMixin


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPVisionEncoder(PresetMixin, Backbone):
    """SigLIP image tower: ViT with a MAP head; output is the image embedding.

    Args:
        patch_size: int P.
        width, depth, num_heads, mlp_dim: ViT sizes (see `layers.vit.VARIANTS`).
        image_size: int or `(H, W)`, the training resolution; fixes the learned
            position grid `(H // P, W // P)`. Other input sizes run with a resized
            position grid.
        pooling: `"map"` (released SigLIP), `"gap"`, `"token"` or `"none"`.
        num_classes: optional Dense head width (absent in released SigLIP).
        num_channels: input channels.

    Inputs: `images` `(B, H, W, C)` float in [-1, 1].
    Outputs: `(B, width)` (or `(B, num_classes)`).
    """

    def __init__(
        self,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        image_size=224,
        pooling="map",
        num_classes=None,
        num_channels=3,
        dtype=None,
        **kwargs,
    ):
        image_size = _pair(image_size)
        self.vit = VisionTransformer(
            patch_size=patch_size,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            grid_size=(image_size[0] // patch_size, image_size[1] // patch_size),
            pooling=pooling,
            num_classes=num_classes,
            num_channels=num_channels,
            name="vit",
            dtype=dtype,
        )
        images = keras.Input(shape=(None, None, num_channels), name="images")
        super().__init__(inputs=images, outputs=self.vit(images), dtype=dtype, **kwargs)
        self.image_size = image_size

    @property
    def num_channels(self):
        return self.vit.num_channels

    @property
    def output_dim(self):
        return self.vit.num_classes or self.vit.width

    def get_config(self):
        config = super().get_config()
        vit = self.vit.get_config()
        for key in ("patch_size", "width", "depth", "num_heads", "mlp_dim", "pooling", "num_classes", "num_channels"):
            config[key] = vit[key]
        config["image_size"] = self.image_size
        return config


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)
