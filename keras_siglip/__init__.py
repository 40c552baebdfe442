"""keras_siglip: Google's SigLIP family of vision-language encoders for Keras 3."""

from keras_siglip import analysis, callbacks, data, distribution, layers, losses, metrics, models, optimizers, transfer

__version__ = "0.1.0"
