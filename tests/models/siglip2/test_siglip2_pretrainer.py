"""SigLIP2Pretrainer: the recipe's loss terms, the stage switch, counted forwards
and traces, the EMA teacher, and exact resumption mid-stage."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.callbacks import BackupAndRestore
from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.models import SigLIP2Pretrainer
from keras_siglip.models.siglip2 import recipe_card, size_factor_for_width
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.tiny_pretrainer import BATCH, LOC, TEXT_VOCAB, VIEWS, make_inputs, make_pretrainer, tiny_backbone

BACKEND = keras.backend.backend()


def numpy_distillation_ce(student, teacher, center, tau_s=0.1, tau_t=0.04):
    def softmax(z):
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    p_t = softmax((teacher - center) / tau_t)
    log_p_s = np.log(softmax(student / tau_s))
    return -(p_t * log_p_s).sum(-1)


def numpy_sigmoid_loss(img, txt, t, b):
    logits = np.exp(t) * img @ txt.T + b
    labels = 2 * np.eye(len(img)) - 1
    return -np.mean(np.sum(-np.logaddexp(0, -labels * logits), axis=-1))


def test_architecture_follows_the_recipe():
    model = make_pretrainer()
    text = model.backbone.text_encoder.transformer
    assert model.decoder.depth == text.depth // 2
    assert (model.decoder.width, model.decoder.num_heads, model.decoder.mlp_dim) == (
        text.width, text.num_heads, text.mlp_dim)
    assert model.decoder.vocabulary_size == TEXT_VOCAB + LOC
    assert model.distillation_step == 4
    assert [size_factor_for_width(w) for w in (768, 1024, 1152, 1536)] == [0.25, 0.5, 1.0, 0.5]
    assert recipe_card("So400m")["decoder_depth"] == 13
    with pytest.raises(ValueError, match="size_factor"):
        SigLIP2Pretrainer(tiny_backbone(), total_steps=10)


def test_recipe_cards_are_listed():
    import subprocess
    import sys

    from keras_siglip.presets import list_presets

    cards = list_presets()["siglip2_training"]
    assert {size: card["size_factor"] for size, card in cards.items()} == {
        "B": 0.25, "L": 0.5, "So400m": 1.0, "g-opt": 0.5}
    assert all(card["distillation_start"] == 0.8 and card["num_local_views"] == 8 for card in cards.values())
    listing = subprocess.run([sys.executable, "-m", "keras_siglip.cli", "presets"], capture_output=True,
                             text=True, check=True).stdout
    assert "SigLIP 2 training recipe per size" in listing
    assert "So400m   image So400m/16, text So400m, decoder depth 13, f_size 1.0" in listing


def test_stage_a_terms_equal_numpy():
    model = make_pretrainer()
    x = make_inputs()
    out = model(x, training=False)
    loss = model.compute_loss(x, None, out, training=False)
    img, txt = (ops.convert_to_numpy(out[k]) for k in ("image_embeddings", "text_embeddings"))
    head = model.backbone.contrastive_head
    t, b = (float(ops.convert_to_numpy(v)[0]) for v in (head.log_temperature, head.bias))
    sigmoid = numpy_sigmoid_loss(img, txt, t, b)
    # Decoder: per-caption mean NLL of the scored targets, from full numpy logits.
    hidden = ops.convert_to_numpy(out["decoder_hidden_states"]).astype("float64")
    kernel, bias = (ops.convert_to_numpy(v).astype("float64") for v in model.decoder.logits_dense.weights)
    logits = hidden @ kernel + bias
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    targets = x["decoder_targets"]
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    weights = targets != 0
    decoder = np.mean((nll * weights).sum(-1) / weights.sum(-1))
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), sigmoid + decoder, rtol=1e-5)
    assert "distillation_loss" not in out and model.distillation is None


def test_a_quantized_decoder_is_refused_not_read_as_floats():
    """The chunked loss reads the logits kernel directly: an int8 kernel would
    be taken for float weights."""
    model = make_pretrainer()
    x = make_inputs()
    model.decoder.logits_dense.quantize("int8")
    out = model(x, training=False)
    with pytest.raises(ValueError, match="chunked decoder loss reads float kernels; this model is quantized"):
        model.compute_loss(x, None, out, training=False)


def test_decoder_reads_unpooled_tokens_and_scores_only_targets(monkeypatch):
    model = make_pretrainer()
    kernel = model.decoder.logits_dense.kernel  # zero-initialised: every token would score log V
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype("float32"))
    seen = []
    original = type(model.decoder).hidden_states
    monkeypatch.setattr(type(model.decoder), "hidden_states",
                        lambda self, ids, encoded, *a: seen.append(tuple(encoded.shape)) or original(self, ids, encoded, *a))
    x = make_inputs()
    base = ops.convert_to_numpy(model.compute_loss(x, None, model(x), training=False))
    assert seen == [(BATCH, 16, 32)]  # all 4 x 4 patch tokens of width 32, not the pooled embedding
    y = dict(x, decoder_targets=x["decoder_targets"].copy())
    y["decoder_targets"][:, 3] = 0
    assert ops.convert_to_numpy(model.compute_loss(y, None, model(y), training=False)) != base


def test_stage_b_terms_equal_numpy():
    """With every patch masked the masked view is deterministic: both SSL terms
    equal numpy cross-entropies of separately computed head outputs."""
    model = make_pretrainer(mask_ratio=1.0)
    model.start_distillation()
    state, vit = model.distillation, model.backbone.vision_encoder.vit
    for center in (state.global_center, state.patch_center):  # a non-zero centre must be used
        center.assign(np.linspace(-0.2, 0.3, 24).astype("float32"))
    x = make_inputs()
    out = model(x, training=False)
    teacher_tokens = state.teacher_vit(x["global_view"], return_tokens=True)
    teacher_global = ops.convert_to_numpy(state.teacher_global_head(state.teacher_vit.pool(teacher_tokens)))
    teacher_patch = ops.convert_to_numpy(state.teacher_patch_head(teacher_tokens))
    local = ops.convert_to_numpy(state.global_head(vit(x["local_views"].reshape(-1, 16, 16, 3))))
    local = local.reshape(BATCH, VIEWS, -1)
    masked = vit(x["global_view"], return_tokens=True, masked_patches=np.ones((BATCH, 16), bool),
                 mask_token=state.mask_token)
    student_patch = ops.convert_to_numpy(state.patch_head(masked))
    center = np.linspace(-0.2, 0.3, 24)
    l2g = numpy_distillation_ce(local, teacher_global[:, None], center).mean()
    mask = numpy_distillation_ce(student_patch, teacher_patch, center).mean()
    np.testing.assert_allclose(float(ops.convert_to_numpy(out["distillation_loss"])), l2g, rtol=1e-5)
    np.testing.assert_allclose(float(ops.convert_to_numpy(out["masked_prediction_loss"])), mask, rtol=1e-5)
    total = ops.convert_to_numpy(model.compute_loss(x, None, out, training=False))
    stage_a = make_pretrainer(mask_ratio=1.0)
    stage_a.set_weights(model.get_weights()[:len(stage_a.get_weights())])
    base = ops.convert_to_numpy(stage_a.compute_loss(x, None, stage_a(x), training=False))
    np.testing.assert_allclose(total, base + 0.5 * (l2g + 0.25 * mask), rtol=1e-5)


def test_teacher_starts_as_the_student_and_follows_its_ema():
    model = make_pretrainer(ema_momentum=0.9)
    model.start_distillation()
    state, vit = model.distillation, model.backbone.vision_encoder.vit
    for t, s in zip(state.teacher_weights(), state.student_weights(vit)):
        np.testing.assert_array_equal(ops.convert_to_numpy(t), ops.convert_to_numpy(s))
    for t in state.teacher_weights():  # a teacher that differs, so the mix is visible
        t.assign(ops.convert_to_numpy(t) + 0.5)
    teacher = [ops.convert_to_numpy(v).copy() for v in state.teacher_weights()]
    student = [ops.convert_to_numpy(v).copy() for v in state.student_weights(vit)]
    model.train_on_batch(make_inputs())
    for new, t, s in zip(state.teacher_weights(), teacher, student):
        np.testing.assert_allclose(ops.convert_to_numpy(new), np.float32(0.9) * t + np.float32(0.1) * s,
                                   rtol=0, atol=1e-6)
    assert not any(v.trainable for v in state.teacher_weights())
    assert state.mask_token.trainable and all(v.trainable for v in state.global_head.weights)


class Counter:
    """Counts Python executions of methods (traces on JAX / TensorFlow, steps on torch)."""

    def __init__(self, monkeypatch):
        self.calls = {}
        self.monkeypatch = monkeypatch

    def wrap(self, cls, method, key=lambda self, *a, **k: type(self).__name__):
        original = getattr(cls, method)
        counter = self

        def wrapped(obj, *args, **kwargs):
            name = f"{method}:{key(obj, *args, **kwargs)}"
            counter.calls[name] = counter.calls.get(name, 0) + 1
            return original(obj, *args, **kwargs)

        self.monkeypatch.setattr(cls, method, wrapped)


def test_one_forward_per_tower_per_view(monkeypatch):
    model = make_pretrainer()
    model.start_distillation()
    x = make_inputs()
    if BACKEND == "torch":  # eager steps: count the second one (the first also builds symbolically)
        model.train_on_batch(x)
    counter = Counter(monkeypatch)
    counter.wrap(VisionTransformer, "call", key=lambda vit, inputs, *a, **k: (
        vit.name, tuple(inputs.shape[1:3]), k.get("masked_patches") is not None))
    counter.wrap(type(model.backbone.text_encoder), "call")
    counter.wrap(type(model.decoder), "hidden_states")
    counter.wrap(type(model.backbone), "call")
    model.train_on_batch(x)
    per_trace = {k: v for k, v in counter.calls.items()}
    traces = counter.calls["hidden_states:TextDecoder"]
    assert traces >= 1
    assert per_trace == {
        "call:('vit', (32, 32), False)": traces,  # the un-augmented image (sigmoid + decoder)
        "call:('vit', (16, 16), False)": traces,  # the V local crops, as one batch
        "call:('vit', (32, 32), True)": traces,  # the masked global view
        "call:('teacher_vit', (32, 32), False)": traces,  # the teacher's global view
        "call:SigLIPTextEncoder": traces,
        "hidden_states:TextDecoder": traces,
    }, per_trace


def test_stage_switch_retraces_once(monkeypatch):
    """Before the switch no teacher exists and the SSL terms log 0; after, they
    are non-zero; the train function is built twice (traced once each on JAX/TF)."""
    model = make_pretrainer(total_steps=8, distillation_start=0.5)
    counter = Counter(monkeypatch)
    counter.wrap(SigLIP2Pretrainer, "compute_loss", key=lambda model, *a, **k: model.distilling)
    counter.wrap(SigLIP2Pretrainer, "make_train_function")
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((model.distilling, len(model.distillation.weights) if model.distilling else 0,
                         logs["distillation_loss"], logs["masked_prediction_loss"], logs["ema_momentum"]))

    x = make_inputs(batch=16)
    history = model.fit(x, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[Watch()])
    assert [s[0] for s in seen] == [False] * 4 + [True] * 4
    assert all(s[2] == s[3] == s[4] == 0 for s in seen[:4])
    assert seen[4][1] > 0 and seen[-1][2] > 0 and seen[-1][3] > 0
    assert history.history["ema_momentum"][1] == pytest.approx(0.996)
    builds = counter.calls["make_train_function:SigLIP2Pretrainer"]
    forced = builds - 1  # fit's own call, then the switch's rebuild
    assert forced == 1
    if BACKEND != "torch":  # traced once per stage: at fit's start, at the switch, never after
        assert counter.calls["compute_loss:False"] == 1
        assert counter.calls["compute_loss:True"] == 1
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 8


def test_new_weights_get_optimizer_slots_and_keep_old_state():
    model = make_pretrainer(total_steps=4, distillation_start=0.5)
    x = make_inputs(batch=8)
    model.fit(x, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 2 steps: still stage A
    before = {v.path: ops.convert_to_numpy(v).copy() for v in model.optimizer.variables}
    model.start_distillation()
    after = {v.path: ops.convert_to_numpy(v) for v in model.optimizer.variables}
    assert set(before) < set(after)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert any("mask_token" in p for p in after)


def _fit_run(tmp_path, interrupt_at=None, steps_per_execution=1, save_freq=1):
    """8 steps in 2 epochs of 4, stage B from step 4; optionally killed after
    optimizer step `interrupt_at` and resumed by a fresh model."""

    def fresh():
        keras.utils.set_random_seed(11)
        model = make_pretrainer(total_steps=8, distillation_start=0.5, compile=False)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_execution)
        return model

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(ops.convert_to_numpy(self.model.optimizer.iterations)) >= interrupt_at:
                raise KeyboardInterrupt

    x = make_inputs(batch=16)
    backup = BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
    model = fresh()
    if interrupt_at is not None:
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[backup, Interrupt()])
        model = fresh()
    model.fit(x, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[backup])
    return model


def assert_same_state(a, b):
    assert a.distilling and b.distilling
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    for x, y in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_allclose(ops.convert_to_numpy(x), ops.convert_to_numpy(y), rtol=0, atol=1e-6)


def test_backup_and_restore_resumes_exactly_mid_stage(tmp_path):
    """An uninterrupted run vs two killed at step 6 (stage B, mid-epoch) and
    resumed by fresh models: one backing up every step (the resumed model
    rebuilds the teacher from the backup), one running two steps per
    execution with epoch backups (resumed at step 4, before the switch). All
    three end in the same state."""
    whole = _fit_run(tmp_path / "whole")
    assert int(ops.convert_to_numpy(whole.optimizer.iterations)) == 8
    assert_same_state(whole, _fit_run(tmp_path / "every_step", interrupt_at=6))
    if BACKEND == "jax":  # torch runs one step per execution; TensorFlow shares the code path, slowly
        assert_same_state(whole, _fit_run(tmp_path / "two_per_execution", interrupt_at=6, steps_per_execution=2,
                                          save_freq="epoch"))


def test_missing_inputs_are_named():
    model = make_pretrainer()
    x = make_inputs()
    with pytest.raises(ValueError, match="decoder_targets"):
        model({k: v for k, v in x.items() if k != "decoder_targets"})
    model.start_distillation()
    with pytest.raises(ValueError, match="local_views"):
        model({k: v for k, v in x.items() if k != "local_views"})
    with pytest.raises(ValueError, match="out of range|vocabulary"):
        model.fit(dict(x, decoder_token_ids=x["decoder_token_ids"] + 100), batch_size=4, verbose=0)


def test_without_distillation_start_no_teacher_ever():
    model = make_pretrainer(total_steps=4, distillation_start=None)
    history = model.fit(make_inputs(views=False), batch_size=4, epochs=2, verbose=0)
    assert model.distillation is None
    assert history.history["distillation_loss"] == [0.0, 0.0]
    assert np.isfinite(history.history["loss"]).all()


def test_backbone_after_training_is_a_plain_two_tower_model(tmp_path):
    model = make_pretrainer()
    model.start_distillation()
    path = os.path.join(tmp_path, "preset")
    model.backbone.save_to_preset(path)
    restored = SigLIPBackbone.from_preset(path)
    x = make_inputs()
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored.encode_images(x["images"])),
        ops.convert_to_numpy(model.backbone.encode_images(x["images"])), atol=1e-6,
    )
    assert len(restored.weights) == len(model.backbone.weights)
    assert not any("teacher" in w.path or "decoder" in w.path for w in restored.weights)


def test_mixed_bfloat16_and_remat_train():
    """bfloat16 towers with rematerialised blocks: every term finite, the
    teacher and heads in the backbone's policy, the loss terms in float32.
    (JAX: remat of the towers is tested in tests/training; compiling this
    step with it takes a minute there.)"""
    remat = BACKEND != "jax"
    keras.utils.set_random_seed(0)
    dtype = "mixed_bfloat16"
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32,
                            remat=remat, dtype=dtype),
        SigLIPTextEncoder(vocabulary_size=TEXT_VOCAB, width=24, depth=2, num_heads=2, mlp_dim=48,
                          sequence_length=8, num_classes=32, remat=remat, dtype=dtype),
        dtype=dtype,
    )
    model = SigLIP2Pretrainer(backbone, total_steps=4, num_loc_tokens=LOC, size_factor=0.5, num_prototypes=24,
                              head_hidden_dim=16, head_bottleneck_dim=8, seed=0, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.start_distillation()  # stage B's step holds stage A's
    logs = model.train_on_batch(make_inputs(), return_dict=True)
    state = model.distillation
    assert state.teacher_vit.compute_dtype == "bfloat16" and state.teacher_vit.remat == remat
    assert model.decoder.compute_dtype == "bfloat16"
    out = model(make_inputs(), training=False)
    for term in ("distillation_loss", "masked_prediction_loss"):
        assert keras.backend.standardize_dtype(out[term].dtype) == "float32"
    for term in ("sigmoid_loss", "decoder_loss", "distillation_loss", "masked_prediction_loss"):
        assert np.isfinite(logs[term]) and logs[term] > 0, (term, logs)
