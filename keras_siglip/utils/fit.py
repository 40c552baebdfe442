"""Fit on TensorFlow with one trace of the train step instead of two."""

import keras


def build_optimizer_before_tracing(model):
    """Create `model`'s optimizer variables now, if `fit` on TensorFlow would
    create them inside its first trace.

    Keras' TensorFlow trainer builds the optimizer lazily, inside the traced
    train step (unless a `tf.distribute` strategy is set). A `tf.function` that
    creates variables in its first trace is traced a second time, so the first
    `fit` of a model traces its whole train step twice: 4-5 s of a tiny SigLIP's
    9 s first step on a 2-core CPU. Building it here, on the model's trainable
    variables, is what Keras does before the first step on JAX and torch.
    A model whose layers are not all built is left to Keras (its variables do
    not exist yet)."""
    optimizer = getattr(model, "optimizer", None)
    if (
        keras.config.backend() != "tensorflow"
        or optimizer is None
        or optimizer.built
        or getattr(model, "_distribute_strategy", None) is not None
        or not all(layer.built for layer in model._flatten_layers())
    ):
        return
    optimizer.build(model.trainable_variables)


class BuildOptimizerBeforeFitMixin:
    """`fit` builds the optimizer first (see `build_optimizer_before_tracing`).

    Put it right before the Keras model class in the bases, so the other
    mixins' `fit` (input checks, training stages) run first."""

    def fit(self, *args, **kwargs):
        build_optimizer_before_tracing(self)
        return super().fit(*args, **kwargs)
