"""Model-level bias metrics of a two-tower (SigLIP / CLIP) model, after M4 ("CLIP the
Bias", Alabdulmohsin et al., ICLR 2024, arXiv 2403.04547) and SigLIP 2 (sec. 3.5).

The data-level quantities (`keras_siglip.data.statistics`; reference/papers.md h.1:
"Representation bias (1st order): deviation of E_q[s_k] from pi_k"; "Association bias
(2nd order): non-zero covariance between s_k and y_r"; "model-level analogues use model
predictions") become model-level ones by replacing the data's annotations with the
model's zero-shot predictions on labelled probe images:

  - representation bias (RB): probe images that carry *no* sensitive attribute are
    classified zero-shot among the K sensitive groups' text prompts (e.g. "a photo of a
    man" / "a photo of a woman"); share_k = fraction of probes assigned group k, and
    RB = max_k |share_k - pi_k| with pi_k = 1/K by default. For K = 2 this is SigLIP 2's
    metric (papers.md h.4: "fraction of non-human images assigned 'man' over 'woman'
    minus 50%"), |share_a - 50%|; the signed value share_a - 1/2 is `shares[a] - 0.5`.
  - association bias (AB): probe images labelled with their sensitive group s_i (e.g.
    FairFace faces with perceived gender) are classified zero-shot among C concept
    prompts (e.g. occupations), giving one-hot predictions yhat_i (N, C); then
    AB[k, r] = Cov(s_k, yhat_r) = E[s_k yhat_r] - E[s_k] E[yhat_r] over the probes, the
    data-level second-order statistic applied to the predictions, and
    AB = max_{k, r} |AB[k, r]|. It is zero when the model's concept predictions do not
    depend on the group (papers.md h.4: "AB metric: occupation-pair preference vs
    FairFace gender"; for K = 2 groups of equal size 1/2, Cov(s_a, yhat_r) =
    (P(yhat = r | a) - P(yhat = r | b)) / 4, i.e. the difference between the groups'
    rates of concept r, scaled).

A zero-shot pick is the argmax of image . text over the candidate prompts (ties go to
the lower index); a shared scale and bias (SigLIP's t and b) do not change it, so the
functions take L2-normalised embeddings (or any scores). Everything is numpy.
"""

import dataclasses

import numpy as np

from keras_siglip.data import m4


def _embeddings(x, name):
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}.")
    x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def zero_shot_predictions(image_embeddings, text_embeddings):
    """One-hot zero-shot picks: (N, D) images x (C, D) prompts -> float64 (N, C) with a
    1 at argmax_c image_i . text_c (ties: the lowest c)."""
    images = _embeddings(image_embeddings, "image_embeddings")
    texts = _embeddings(text_embeddings, "text_embeddings")
    if len(images) == 0:
        raise ValueError("image_embeddings holds no probe images.")
    if len(texts) < 2:
        raise ValueError(f"text_embeddings needs at least 2 prompts to choose between, got {len(texts)}.")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image and text embeddings disagree on D: {images.shape[1]} vs {texts.shape[1]}.")
    picks = np.argmax(images @ texts.T, axis=1)
    out = np.zeros((len(images), len(texts)))
    out[np.arange(len(images)), picks] = 1.0
    return out


@dataclasses.dataclass(frozen=True)
class RepresentationBias:
    """`shares` (K,): fraction of probes assigned each group; `targets` (K,) pi;
    `value` = max_k |shares_k - targets_k|; `num_probes`."""
    shares: np.ndarray
    targets: np.ndarray
    value: float
    num_probes: int


@dataclasses.dataclass(frozen=True)
class AssociationBias:
    """`matrix` (K, C): Cov(s_k, yhat_r) over the probes; `value` = max |matrix|;
    `group_rates` (K, C): P(yhat = r | group k) (NaN for a group without probes);
    `num_probes`."""
    matrix: np.ndarray
    value: float
    group_rates: np.ndarray
    num_probes: int


def representation_bias(image_embeddings, group_text_embeddings, targets=None):
    """Model representation bias on probe images that carry no sensitive attribute.

    Args:
        image_embeddings: (N, D) embeddings of the probes (N >= 1).
        group_text_embeddings: (K, D) one prompt embedding per sensitive group, K >= 2
            (average several templates and re-normalise beforehand if wanted).
        targets: (K,) target shares pi (default uniform 1/K).
    Returns:
        RepresentationBias; value = max_k |share_k - pi_k| (K = 2, uniform: SigLIP 2's
        |P(pick group 0) - 50%|).
    """
    picks = zero_shot_predictions(image_embeddings, group_text_embeddings)
    k = picks.shape[1]
    pi = np.full(k, 1.0 / k) if targets is None else np.asarray(targets, np.float64)
    if pi.shape != (k,) or not np.all(np.isfinite(pi)):
        raise ValueError(f"targets must be {k} finite shares (one per group), got shape {pi.shape}.")
    shares = picks.mean(0)
    return RepresentationBias(shares, pi, float(np.abs(shares - pi).max()), len(picks))


def association_bias(image_embeddings, concept_text_embeddings, groups):
    """Model association bias between sensitive groups and concepts on labelled probes.

    Args:
        image_embeddings: (N, D) embeddings of probe images that show the sensitive
            attribute.
        concept_text_embeddings: (C, D) one prompt embedding per concept (C >= 2).
        groups: the probes' sensitive groups, (N,) integer codes or (N, K) indicators
            in [0, 1] (as `keras_siglip.data.balance_weights` takes them).
    Returns:
        AssociationBias with matrix[k, r] = Cov(s_k, yhat_r) =
        mean(s_k yhat_r) - mean(s_k) mean(yhat_r) over the N probes.
    """
    predictions = zero_shot_predictions(image_embeddings, concept_text_embeddings)
    return association_bias_from_predictions(groups, predictions)


def association_bias_from_predictions(groups, predictions):
    """`association_bias` from given (N, C) predictions (one-hot picks, or soft
    probabilities in [0, 1]) and (N,) / (N, K) groups."""
    s = m4._indicators(groups, "groups")
    y = m4._indicators(predictions, "predictions")
    if len(s) == 0:
        raise ValueError("no probe images.")
    if len(s) != len(y):
        raise ValueError(f"groups and predictions disagree on N: {len(s)} vs {len(y)}.")
    stats = m4._stats(s, y, np.ones(len(s)))
    matrix = stats["association"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (s.T @ y) / s.sum(0)[:, None]
    return AssociationBias(matrix, float(np.abs(matrix).max()) if matrix.size else 0.0, rates, len(s))
