"""Cached caption decoding with keras-hub samplers, and per-backend compilation.

The sampler's "prompt" is the decoder's input sequence `(B, L + 1)`: column 0
is the pad id 0 the decoder starts from (held fixed by the sampler's mask),
column t + 1 receives generated target t. At loop index i the step feeds
column i - 1 at decoder position i - 1 (`call_with_cache`), whose logits
predict column i. The generated targets are columns `1..L`.

A row that has produced EOS is finished: its later logits are replaced by a
point mass on the pad id (log-probability 0), so finished rows keep padding,
and a finished beam keeps its score while the others grow.
"""

import itertools

import keras
from keras import ops
from keras_hub.samplers import BeamSampler, GreedySampler, RandomSampler, TopKSampler

PAD_ID = 0
EOS_ID = 1
STRATEGIES = ("greedy", "beam", "sampling")


def make_sampler(strategy, num_beams=4, temperature=1.0, top_k=None, seed=None):
    """A keras-hub sampler for `strategy` ("greedy", "beam" or "sampling")."""
    if strategy == "greedy":
        return GreedySampler(temperature=temperature)
    if strategy == "beam":
        if num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1; got {num_beams}.")
        return BeamSampler(num_beams=num_beams, return_all_beams=True, temperature=temperature)
    if strategy == "sampling":
        if top_k:
            return TopKSampler(k=top_k, seed=seed, temperature=temperature)
        return RandomSampler(seed=seed, temperature=temperature)
    raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {strategy!r}.")


def decode_with_sampler(decoder, encoded, sampler, max_length, model=None):
    """Generate captions for encoder tokens.

    Args:
        decoder: a `TextDecoder`.
        encoded: `(B, N, E_enc)` encoder tokens.
        sampler: a keras-hub `Sampler` (`make_sampler`).
        max_length: L, the number of generated positions (`<= decoder.max_length`).
        model: the model holding the decoder; on JAX the sampler's loop maps
            its variables (needed inside `compile_stateless`).

    Returns:
        `(token_ids, log_probs)`: `(B, L)` int32 targets (pad 0 after EOS) and,
        for beam search, `(B,)` the best beam's total log-probability (else None).
    """
    if max_length > decoder.max_length:
        raise ValueError(
            f"max_length={max_length} exceeds the decoder's position table ({decoder.max_length})."
        )
    batch = ops.shape(encoded)[0]
    cross_cache = decoder.cross_attention_cache(encoded)
    beams = getattr(sampler, "num_beams", None)
    if beams is not None:  # the sampler repeats rows beam-major per example
        cross_cache = ops.repeat(cross_cache, beams, axis=0)
    positions = ops.arange(max_length + 1, dtype="int32")[None, :]
    prompt = ops.zeros((batch, max_length + 1), dtype="int32")
    mask = ops.broadcast_to(ops.equal(positions, 0), (batch, max_length + 1))
    cache = decoder.initial_cache(batch, max_length)
    forced_pad = ops.where(
        ops.equal(ops.arange(decoder.vocabulary_size), PAD_ID), 0.0, -1e9
    )[None, :]

    def next(prompt, cache, index):
        rows = ops.shape(prompt)[0]
        inputs = ops.slice(prompt, (0, index - 1), (rows, 1))
        logits, hidden, cache = decoder.call_with_cache(inputs, cache, index - 1, cross_cache)
        logits = ops.cast(logits[:, 0], "float32")
        generated = ops.logical_and(positions >= 1, positions < index)
        finished = ops.any(ops.logical_and(ops.equal(prompt, EOS_ID), generated), axis=1)
        logits = ops.where(finished[:, None], forced_pad, logits)
        return logits, hidden[:, 0], cache

    outputs = sampler(
        next, prompt, cache=cache, index=1, mask=mask, stop_token_ids=(EOS_ID,), model=model
    )
    if beams is not None:
        prompts, log_probs = outputs
        return prompts[:, 0, 1:], log_probs[:, 0]
    return outputs[:, 1:], None


def compile_stateless(model, fn, extra_variables=()):
    """`fn(*args)` compiled for the backend, reading `model`'s variables.

    JAX: `jax.jit` with the model's and `extra_variables`' values passed in
    (`extra_variables`, e.g. a sampler's seed state, are written back).
    TensorFlow: `tf.function(jit_compile=True)`. Torch: eager under `no_grad`.
    """
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        def run_torch(*args):
            with torch.no_grad():
                return fn(*args)

        return run_torch
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    extra_variables = list(extra_variables)

    @jax.jit
    def compiled(args, state):
        extra, trainable, non_trainable = state
        mapping = itertools.chain(
            zip(extra_variables, extra),
            zip(model.trainable_variables, trainable),
            zip(model.non_trainable_variables, non_trainable),
        )
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = fn(*args)
        new_extra = []
        for variable, value in zip(extra_variables, extra):
            current = scope.get_current_value(variable)
            new_extra.append(value if current is None else current)
        return outputs, new_extra

    def run_jax(*args):
        state = (
            [v.value for v in extra_variables],
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        outputs, new_extra = compiled(args, state)
        for variable, value in zip(extra_variables, new_extra):
            variable.assign(value)
        return outputs

    return run_jax
