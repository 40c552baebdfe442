"""keras_siglip: Google's SigLIP family of vision-language encoders for Keras 3.

Submodules are imported on first use (`keras_siglip.models`, ...), so the
command line starts without loading a deep-learning framework.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis", "callbacks", "convert", "data", "distribution", "evaluate", "layers", "losses", "metrics",
    "models", "optimizers", "plots", "search", "transfer",
)


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"keras_siglip.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_siglip' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
