"""keras_siglip: Google's SigLIP family of vision-language encoders for Keras 3."""

from keras_siglip import data, layers, losses, metrics, models

__version__ = "0.1.0"
