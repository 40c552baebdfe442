"""The SigLIP papers' optimizer in Keras: AdamW with big_vision's weight decay.

big_vision (`big_vision/optax.py`) chains global-norm clipping, Adam, the
learning rate, decoupled weight decay on kernels only, and the schedule:
`w -= schedule(step) * (lr * adam(g) + wd * w)` for kernels, no decay for
biases, LayerNorm, embeddings, position embeddings, the MAP probe, t and b.
The decay is *not* multiplied by the base learning rate, so the papers'
`wd = 1e-4` at `lr = 1e-3` is Keras `AdamW(weight_decay=0.1)`; passing 1e-4
to Keras' AdamW would decay 1000x less than the papers.
"""

import keras

# Keras matches this against variable names: everything but kernels ("kernel";
# TensorFlow's update sees the tf.Variable name, e.g. "dense/kernel:0").
_NO_DECAY = [r"^(?!(.*/)?kernel(:\d+)?$)"]


def warmup_cosine(learning_rate, total_steps=None, warmup_steps=0):
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine
    decay to 0 at `total_steps` (constant after the warmup when `total_steps`
    is None). Returns a float or a Keras `LearningRateSchedule`."""
    if total_steps is None:
        if not warmup_steps:
            return learning_rate
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=learning_rate, warmup_steps=warmup_steps
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps); got warmup_steps={warmup_steps}, total_steps={total_steps}."
        )
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total_steps - warmup_steps, warmup_target=learning_rate, warmup_steps=warmup_steps
    )


def _tensorflow_replica_context():
    """The replica context of a TensorFlow strategy with several replicas (e.g.
    inside `MirroredStrategy`'s train step), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()  # None in a cross-replica context
    return context if context is not None and context.num_replicas_in_sync > 1 else None


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPAdamW(keras.optimizers.AdamW):
    """AdamW with the SigLIP papers' defaults and big_vision's semantics.

    Args:
        learning_rate: peak learning rate (1e-3 in the papers).
        weight_decay: decoupled decay per step at schedule factor 1, applied
            to kernels only (1e-4 in the papers): `w -= wd * schedule * w`.
        total_steps: optional; with it the learning rate follows a linear
            warmup and a cosine decay to 0 (`warmup_cosine`).
        warmup_steps: warmup length (default: 10% of `total_steps`, at most
            10,000 as in the SigLIP configs; 0 without `total_steps`).
        beta_1, beta_2, epsilon: Adam's (beta_2 = 0.95 as SigLIP trains with).
        global_clipnorm: gradient clipping by global norm (1.0).
    """

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay=1e-4,
        total_steps=None,
        warmup_steps=None,
        beta_1=0.9,
        beta_2=0.95,
        epsilon=1e-8,
        global_clipnorm=1.0,
        name="siglip_adamw",
        **kwargs,
    ):
        if learning_rate <= 0 or weight_decay < 0:
            raise ValueError(
                f"learning_rate must be > 0 and weight_decay >= 0; got {learning_rate} and {weight_decay}."
            )
        if warmup_steps is None:
            warmup_steps = min(total_steps // 10, 10_000) if total_steps else 0
        super().__init__(
            learning_rate=warmup_cosine(learning_rate, total_steps, warmup_steps),
            # Keras multiplies the decay by the current learning rate.
            weight_decay=weight_decay / learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            global_clipnorm=global_clipnorm,
            name=name,
            **kwargs,
        )
        self.exclude_from_weight_decay(var_names=_NO_DECAY)
        self.peak_learning_rate = learning_rate
        self.decoupled_weight_decay = weight_decay
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def _apply_weight_decay(self, variables):
        # Only kernels decay; when none trains (e.g. LoRA factors only), Keras'
        # torch optimizer would fail on an empty list of decayed weights.
        decayed = [v for v in variables if self._use_weight_decay(v)]
        if decayed:
            super()._apply_weight_decay(decayed)

    def _clip_gradients(self, grads):
        clipping = self.clipnorm or self.global_clipnorm or self.clipvalue
        replicas = _tensorflow_replica_context() if clipping else None
        if replicas is None:
            return super()._clip_gradients(grads)
        # Keras clips each replica's share of the gradient and sums the shares
        # afterwards: with clipping active, N replicas train another model than one
        # device. Clip the sum, and hand Keras each replica's 1/N of it to sum.
        import tensorflow as tf

        present = [i for i, grad in enumerate(grads) if grad is not None]
        total = replicas.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        clipped = super()._clip_gradients(total)
        grads = list(grads)
        for i, grad in zip(present, clipped):
            grads[i] = grad / replicas.num_replicas_in_sync
        return grads

    def get_config(self):
        config = super().get_config()
        for key in ("learning_rate", "weight_decay"):
            config.pop(key)
        config.update(
            learning_rate=self.peak_learning_rate,
            weight_decay=self.decoupled_weight_decay,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
        )
        return config
