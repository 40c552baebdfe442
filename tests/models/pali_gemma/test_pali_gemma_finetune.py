"""Efficient PaliGemma fine-tuning: LoRA on the LM (optionally the ViT), a frozen
image tower, bfloat16 and remat, on a tiny random model (every backend).

Measured on this tiny config (CPU, logits up to ~5.6): LoRA at initialisation
leaves the logits unchanged (B is zero; checked to 1e-6); `dtype="bfloat16"` /
`"mixed_bfloat16"` vs float32 on the same weights, max abs logit difference
3.7e-2 / 3.7e-2 (jax), 4.5e-2 / 4.2e-2 (tensorflow), 4.9e-2 / 5.0e-2 (torch),
tolerance BF16_ATOL = 0.1 (bfloat16 keeps 8 significant bits: one step at 5 is
0.03); remat vs no remat: loss and every gradient equal to 1e-5.
"""

import math

import keras
import numpy as np
import pytest

from keras_siglip import transfer
from keras_siglip.models.pali_gemma import PaliGemmaBackbone, PaliGemmaCausalLM, PrefixLMLoss
from tests.helpers import numpy, weights_by_path

BACKEND = keras.backend.backend()
BF16_ATOL = 0.1
CONFIG = dict(
    vocabulary_size=64, image_size=16, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=24, intermediate_dim=32, head_dim=8, vit_patch_size=4, vit_hidden_dim=16,
    vit_num_layers=2, vit_num_heads=2, vit_intermediate_dim=32,
)
RANK = 2


def backbone(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return PaliGemmaBackbone(**{**CONFIG, **overrides})


def batch(size=4, length=8, seed=0):
    """Preprocessed `(x, y, sample_weight)`: `[BOS] prefix(3) suffix(3) EOS pad`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CONFIG["vocabulary_size"], (size, length + 1)).astype("int32")
    ids[:, 0], ids[:, 7], ids[:, 8:] = 2, 1, 0
    ar = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], "int32")
    loss = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0], "float32")
    x = {
        "images": rng.uniform(-1, 1, (size, 16, 16, 3)).astype("float32"),
        "token_ids": ids[:, :-1],
        "padding_mask": (ids[:, :-1] != 0).astype("int32") | (np.arange(length) == 0),
        "response_mask": np.tile(ar[:-1], (size, 1)),
    }
    return x, ids[:, 1:], np.tile(loss[1:], (size, 1))


def logits(model, x):
    return numpy(model(x))


def paths(variables):
    return {v.path for v in variables}


def lm_lora_count(rank):
    n, k, h, d = (CONFIG[key] for key in ("num_query_heads", "num_key_value_heads", "head_dim", "hidden_dim"))
    # query A (N, D, r), B (r, H); value A (K, D, r), B (r, H).
    return CONFIG["num_layers"] * ((n * d * rank + rank * h) + (k * d * rank + rank * h))


def vit_lora_count(rank):
    w, heads = CONFIG["vit_hidden_dim"], CONFIG["vit_num_heads"]
    # keras MultiHeadAttention query/value kernels (W, heads, W / heads): A (W, heads, r), B (r, W / heads).
    return CONFIG["vit_num_layers"] * 2 * (w * heads * rank + rank * (w // heads))


def projector_count():
    return (CONFIG["vit_hidden_dim"] + 1) * CONFIG["hidden_dim"]


# --- Which weights train -------------------------------------------------


@pytest.mark.parametrize("lora_vit", [False, True])
def test_lora_reaches_the_gemma_query_and_value_and_starts_as_identity(lora_vit):
    model = backbone()
    x, _, _ = batch()
    reference = logits(model, x)
    assert transfer.enable_lora(model, RANK, lora_vit=lora_vit) is model
    adapted = [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)]
    in_lm = [layer for layer in adapted if layer.path.startswith("gemma/")]
    in_vit = [layer for layer in adapted if layer.path.startswith("vit/")]
    assert len(in_lm) == 2 * CONFIG["num_layers"] and {layer.name for layer in in_lm} == {"query", "value"}
    assert len(in_vit) == (2 * CONFIG["vit_num_layers"] if lora_vit else 0)
    assert len(adapted) == len(in_lm) + len(in_vit)
    # Only the LoRA factors train; the ViT's query/value biases, the projector,
    # embeddings and norms are frozen; counted exactly.
    assert paths(model.trainable_weights) == {v.path for v in model.weights if "lora_kernel" in v.path}
    expected = lm_lora_count(RANK) + (vit_lora_count(RANK) if lora_vit else 0)
    assert transfer.trainable_parameter_count(model) == expected
    # B is zero-initialised: the adapted model computes exactly the base model.
    np.testing.assert_allclose(logits(model, x), reference, atol=1e-6)


def test_freeze_image_tower_with_and_without_projector():
    model = backbone()
    vit, head = paths(model.vit.weights), paths(model.vit.head.weights)
    total = model.count_params()
    vit_count = sum(math.prod(v.shape) for v in model.vit.weights)
    transfer.freeze_image_tower(model)
    assert paths(model.trainable_weights) == paths(model.weights) - vit
    assert transfer.trainable_parameter_count(model) == total - vit_count
    transfer.freeze_image_tower(model, train_projector=True)
    assert paths(model.trainable_weights) == (paths(model.weights) - vit) | head
    assert transfer.trainable_parameter_count(model) == total - vit_count + projector_count()
    # LoRA on the LM and a trainable projector: the recipe of the guide's variant.
    lora = transfer.freeze_image_tower(transfer.enable_lora(backbone(), RANK), train_projector=True)
    assert transfer.trainable_parameter_count(lora) == lm_lora_count(RANK) + projector_count()
    with pytest.raises(ValueError, match="lora_vit"):
        from tests.helpers import tiny_backbone

        transfer.enable_lora(tiny_backbone(), RANK, lora_vit=True)


def test_lora_fit_changes_only_the_trainable_weights():
    lm = PaliGemmaCausalLM(backbone(), preprocessor=None)
    transfer.enable_lora(lm, RANK)
    transfer.freeze_image_tower(lm, train_projector=True)
    trainable = paths(lm.trainable_weights)
    assert len(trainable) == 4 * CONFIG["num_layers"] + 2
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = batch(size=8)
    before = weights_by_path(lm)
    history = lm.fit(x, y, sample_weight=w, batch_size=4, epochs=3, shuffle=False, verbose=0).history["loss"]
    after = weights_by_path(lm)
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    assert moved == trainable  # every LoRA factor and the projector moved, nothing else
    assert history[-1] < history[0], history


def test_lora_weights_and_merged_preset_round_trip(tmp_path):
    model = transfer.enable_lora(backbone(), RANK, lora_vit=True)
    x, _, _ = batch()
    base = logits(model, x)
    rng = np.random.default_rng(1)
    for v in model.weights:  # stand-in for training: B factors away from zero
        if v.path.endswith("lora_kernel_b"):
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    trained = logits(model, x)
    assert not np.allclose(trained, base, atol=1e-4)

    path = str(tmp_path / "detect.lora.h5")
    model.save_lora_weights(path)
    fresh = transfer.enable_lora(backbone(), RANK, lora_vit=True)  # same seed: same base weights
    np.testing.assert_allclose(logits(fresh, x), base, atol=1e-6)
    fresh.load_lora_weights(path)
    np.testing.assert_allclose(logits(fresh, x), trained, atol=1e-5)

    # A preset holds the merged kernels: no LoRA factors, the same outputs.
    model.save_to_preset(str(tmp_path / "merged"))
    restored = PaliGemmaBackbone.from_preset(str(tmp_path / "merged"))
    assert not [v for v in restored.weights if "lora" in v.path]
    np.testing.assert_allclose(logits(restored, x), trained, atol=1e-5)


# --- bfloat16 --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_bfloat16_forward_is_close_to_float32_and_lora_trains(dtype):
    x, y, w = batch()
    reference = backbone()
    expected = logits(reference, x)
    model = backbone(dtype=dtype)
    model.set_weights(reference.get_weights())
    assert model.decoder.blocks[0].attention.query_dense.compute_dtype == "bfloat16"
    # One compiled forward (JAX would compile every op anew for bfloat16 eagerly).
    got = np.asarray(model.predict(x, batch_size=len(x["images"]), verbose=0), "float32")
    difference = np.abs(got - expected).max()
    print(f"\n{dtype} vs float32: max abs logit difference {difference:.2e} (logits up to {np.abs(expected).max():.2f})")
    assert difference < BF16_ATOL
    assert difference > 0  # it did compute in bfloat16
    if dtype == "bfloat16":
        return
    # The training policy: float32 master weights, bfloat16 compute; LoRA trains.
    lm = PaliGemmaCausalLM(model, preprocessor=None)
    transfer.enable_lora(lm, RANK)
    lm.compile(optimizer=keras.optimizers.Adam(3e-2))
    before = weights_by_path(lm)
    losses = lm.fit(x, y, sample_weight=w, batch_size=4, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    after = weights_by_path(lm)
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    assert moved and moved <= paths(lm.trainable_weights)
    assert all(v.dtype == "float32" for v in lm.weights)  # LoRA factors included


# --- remat -----------------------------------------------------------------


def loss_and_gradients(model, x, y, w):
    loss_fn = PrefixLMLoss()
    if BACKEND == "jax":
        import jax

        values = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def f(values):
            out, _ = model.stateless_call(values, frozen, x, training=True)
            return loss_fn(y, out, w)

        loss, grads = jax.jit(jax.value_and_grad(f))(values)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True), w)
        grads = tape.gradient(loss, model.trainable_variables)
    else:
        loss = loss_fn(y, model(x, training=True), w)
        model.zero_grad()
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
    return float(numpy(loss)), [numpy(g) for g in grads]


def test_remat_gives_the_same_loss_and_gradients(monkeypatch):
    """Full training: the gradients of every weight; every ViT and Gemma block rematerialised."""
    plain, remat = backbone(), backbone(remat=True)
    remat.set_weights(plain.get_weights())
    calls = []
    original = keras.remat
    monkeypatch.setattr(keras, "remat", lambda f: calls.append(f) or original(f))
    x, y, w = batch()
    loss, grads = loss_and_gradients(remat, x, y, w)
    assert len(calls) >= CONFIG["vit_num_layers"] + CONFIG["num_layers"]
    expected_loss, expected_grads = loss_and_gradients(plain, x, y, w)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert len(grads) == len(expected_grads) == len(remat.trainable_variables)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
