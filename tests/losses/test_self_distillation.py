"""SigLIP 2 stage B losses against a float64 numpy transcription (values and
gradients), the EMA update, the centre and the patch mask."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.losses import (
    ema_update,
    local_to_global_loss,
    masked_prediction_loss,
    random_patch_mask,
    updated_center,
)
from tests.helpers import value_and_grads

TAU_S, TAU_T = 0.1, 0.04


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(student, teacher, center, weights):
    """Weighted mean cross-entropy and its gradients (student: the analytic
    `(softmax(s / tau_s) - p_t) / tau_s`; teacher: none)."""
    p_t = softmax((teacher - center) / TAU_T)
    log_p_s = np.log(softmax(student / TAU_S))
    per = -(p_t * log_p_s).sum(-1)
    total = max(weights.sum(), 1.0)
    grad = (softmax(student / TAU_S) - p_t) / TAU_S * weights[..., None] / total
    return (per * weights).sum() / total, grad


@pytest.fixture
def logits(rng):
    return lambda *shape: rng.normal(scale=0.5, size=shape).astype("float32")


def test_local_to_global_matches_reference(logits):
    student, teacher, center = logits(3, 8, 16), logits(3, 16), logits(16)
    value, (d_student, d_teacher) = value_and_grads(
        lambda s, t: local_to_global_loss(s, t, center, TAU_S, TAU_T), [student, teacher]
    )
    expected, grad = reference(student.astype("float64"), teacher.astype("float64")[:, None], center,
                               np.ones((3, 8)))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(d_student, grad, atol=1e-5)
    np.testing.assert_array_equal(d_teacher, 0)  # the teacher is not trained by the loss


def test_masked_prediction_matches_reference_at_masked_patches_only(logits, rng):
    student, teacher, center = logits(2, 10, 16), logits(2, 10, 16), logits(16)
    mask = rng.random((2, 10)) < 0.5
    value, (d_student, d_teacher) = value_and_grads(
        lambda s, t: masked_prediction_loss(s, t, mask, center, TAU_S, TAU_T), [student, teacher]
    )
    expected, grad = reference(student.astype("float64"), teacher.astype("float64"), center, mask.astype("float64"))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(d_student, grad, atol=1e-5)
    assert not d_student[~mask].any()  # unmasked patches get no gradient
    np.testing.assert_array_equal(d_teacher, 0)


def test_no_masked_patch_gives_zero(logits):
    loss = masked_prediction_loss(logits(2, 4, 8), logits(2, 4, 8), np.zeros((2, 4), bool), np.zeros(8, "float32"))
    assert float(ops.convert_to_numpy(loss)) == 0.0


def test_centering_changes_the_teacher_target(logits):
    """A centre equal to the teacher output flattens its target to uniform: the
    loss then equals the student's mean cross-entropy to uniform."""
    student, teacher = logits(2, 3, 8), logits(2, 8)
    flat = float(ops.convert_to_numpy(local_to_global_loss(student, teacher, teacher[0], TAU_S, TAU_T)))
    log_p = np.log(softmax(student[:1].astype("float64") / TAU_S))
    first = float(ops.convert_to_numpy(local_to_global_loss(student[:1], teacher[:1], teacher[0], TAU_S, TAU_T)))
    np.testing.assert_allclose(first, -log_p.mean(-1).mean(), rtol=1e-5)
    assert flat != float(ops.convert_to_numpy(local_to_global_loss(student, teacher, np.zeros(8, "float32"))))


def test_wrong_ranks_are_refused(logits):
    with pytest.raises(ValueError, match=r"\(B, V, K\)"):
        local_to_global_loss(logits(3, 16), logits(3, 16), logits(16))


def test_center_update(logits):
    center, teacher = logits(16), logits(4, 5, 16)
    got = ops.convert_to_numpy(updated_center(center, teacher, momentum=0.9))
    np.testing.assert_allclose(got, 0.9 * center + 0.1 * teacher.reshape(-1, 16).mean(0), rtol=1e-6, atol=1e-7)


def test_ema_update_is_exact(logits):
    teacher = [keras.Variable(logits(3, 4)), keras.Variable(logits(5))]
    student = [keras.Variable(logits(3, 4)), keras.Variable(logits(5))]
    before = [ops.convert_to_numpy(v) for v in teacher]
    ema_update(teacher, student, 0.996)
    m = np.float32(0.996)
    for t, old, s in zip(teacher, before, student):
        np.testing.assert_array_equal(ops.convert_to_numpy(t), m * old + (np.float32(1) - m) * ops.convert_to_numpy(s))
    with pytest.raises(ValueError, match="does not match"):
        ema_update(teacher, student[::-1], 0.9)
    with pytest.raises(ValueError, match="matching variable lists"):
        ema_update(teacher, student[:1], 0.9)


@pytest.mark.parametrize("ratio,count", [(0.5, 8), (0.0, 0), (1.0, 16), (0.3, 5)])
def test_patch_mask_has_exact_counts_and_is_seeded(ratio, count):
    mask = ops.convert_to_numpy(random_patch_mask(6, 16, ratio, seed=3))
    assert mask.dtype == bool and mask.shape == (6, 16)
    assert (mask.sum(-1) == count).all()
    np.testing.assert_array_equal(mask, ops.convert_to_numpy(random_patch_mask(6, 16, ratio, seed=3)))
    if 0 < count < 16:
        assert len({row.tobytes() for row in mask}) > 1  # rows differ
        assert not np.array_equal(mask, ops.convert_to_numpy(random_patch_mask(6, 16, ratio, seed=4)))


def test_patch_mask_refuses_a_bad_ratio():
    with pytest.raises(ValueError, match="mask ratio"):
        random_patch_mask(2, 4, 1.5)
