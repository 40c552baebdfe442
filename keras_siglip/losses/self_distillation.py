"""SigLIP 2 stage B losses: self-distillation (SILC) and masked prediction (TIPS).

Both compare a student's and an EMA teacher's outputs of a DINO-style
projection head (`K` prototypes) as a cross-entropy between the teacher's
sharpened, centred softmax and the student's softmax:

    p_t = softmax((t - center) / teacher_temperature)   (no gradient)
    loss = -sum_k p_t[k] * log_softmax(s / student_temperature)[k]

- local-to-global (SILC): each of the student's local crops `(B, V, K)`
  matches the teacher's view of the whole image `(B, K)`; mean over the
  B * V pairs.
- masked prediction (TIPS): the student sees the global view with some patch
  embeddings replaced by a mask token; at the masked positions its per-patch
  outputs `(B, N, K)` match the teacher's on the unmasked view; mean over the
  masked patches.

The temperatures and centre momentum default to DINO's (0.1, 0.04, 0.9): the
SigLIP 2 paper says "as in SILC" and publishes no values. All computed in
float32.
"""

import keras
from keras import ops

STUDENT_TEMPERATURE = 0.1
TEACHER_TEMPERATURE = 0.04
CENTER_MOMENTUM = 0.9


def _frozen(x):
    """float32, without gradient (cast first: torch's stop_gradient takes tensors only)."""
    return ops.stop_gradient(ops.cast(x, "float32"))


def _teacher_probabilities(teacher_logits, center, teacher_temperature):
    return ops.softmax((_frozen(teacher_logits) - _frozen(center)) / teacher_temperature, axis=-1)


def distillation_cross_entropy(student_logits, teacher_logits, center,
                               student_temperature=STUDENT_TEMPERATURE,
                               teacher_temperature=TEACHER_TEMPERATURE):
    """`(..., K)` student and teacher head outputs, `(K,)` centre -> `(...)`
    cross-entropies; gradients flow into the student only."""
    p_teacher = _teacher_probabilities(teacher_logits, center, teacher_temperature)
    log_p_student = ops.log_softmax(ops.cast(student_logits, "float32") / student_temperature, axis=-1)
    return -ops.sum(p_teacher * log_p_student, axis=-1)


def local_to_global_loss(student_local_logits, teacher_global_logits, center,
                         student_temperature=STUDENT_TEMPERATURE,
                         teacher_temperature=TEACHER_TEMPERATURE):
    """SILC: `(B, V, K)` student outputs of V local crops, `(B, K)` teacher
    output of the global view -> scalar mean over the B * V pairs."""
    if len(student_local_logits.shape) != 3 or len(teacher_global_logits.shape) != 2:
        raise ValueError(
            "local_to_global_loss takes student logits (B, V, K) and teacher logits (B, K); got "
            f"{tuple(student_local_logits.shape)} and {tuple(teacher_global_logits.shape)}."
        )
    per_pair = distillation_cross_entropy(
        student_local_logits, teacher_global_logits[:, None, :], center, student_temperature, teacher_temperature
    )
    return ops.mean(per_pair)


def masked_prediction_loss(student_patch_logits, teacher_patch_logits, mask, center,
                           student_temperature=STUDENT_TEMPERATURE,
                           teacher_temperature=TEACHER_TEMPERATURE):
    """TIPS: `(B, N, K)` per-patch outputs of the masked student and of the
    teacher, `(B, N)` bool mask (True = masked for the student) -> scalar mean
    over the masked patches (0 when none is masked)."""
    per_patch = distillation_cross_entropy(
        student_patch_logits, teacher_patch_logits, center, student_temperature, teacher_temperature
    )
    weights = ops.cast(mask, "float32")
    return ops.sum(per_patch * weights) / ops.maximum(ops.sum(weights), 1.0)


def updated_center(center, teacher_logits, momentum=CENTER_MOMENTUM):
    """DINO's centre: `momentum * center + (1 - momentum) * mean(teacher)`,
    the mean over every axis but the last of `(..., K)` teacher outputs."""
    t = _frozen(teacher_logits)
    batch_mean = ops.mean(ops.reshape(t, (-1, t.shape[-1])), axis=0)
    return momentum * ops.cast(center, "float32") + (1.0 - momentum) * batch_mean


def ema_update(teacher_variables, student_variables, momentum):
    """Assign `momentum * teacher + (1 - momentum) * student` to each teacher
    variable, computed in the teacher variable's dtype."""
    teacher_variables, student_variables = list(teacher_variables), list(student_variables)
    if len(teacher_variables) != len(student_variables):
        raise ValueError(
            f"ema_update needs matching variable lists; got {len(teacher_variables)} teacher and "
            f"{len(student_variables)} student variables."
        )
    for teacher, student in zip(teacher_variables, student_variables):
        if tuple(teacher.shape) != tuple(student.shape):
            raise ValueError(
                f"ema_update: teacher {teacher.path} {tuple(teacher.shape)} does not match student "
                f"{student.path} {tuple(student.shape)}."
            )
        m = ops.cast(momentum, teacher.dtype)
        teacher.assign(m * teacher + (1 - m) * ops.stop_gradient(ops.cast(student, teacher.dtype)))


def random_patch_mask(batch_size, num_patches, ratio=0.5, seed=None):
    """`(B, N)` bool mask with exactly `round(ratio * N)` True positions per
    row, drawn uniformly (a seeded `keras.random` draw: reproducible)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"The mask ratio must lie in [0, 1]; got {ratio}.")
    count = int(round(ratio * num_patches))
    noise = keras.random.uniform((batch_size, num_patches), seed=seed)
    rank = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)  # each position's rank in its row
    return ops.less(rank, count)
