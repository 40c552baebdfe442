"""Boxes as `<locDDDD>` location tokens (PaliGemma detection, LocCa-style tasks).

Convention (big_vision `refcoco_mask2str`, PaliGemma): a box is normalised
`[y1, x1, y2, x2]` in [0, 1], y before x. Each coordinate becomes one of 1024
bins `d = clip(round(v * 1023), 0, 1023)`, computed in float32 with
round-half-to-even (`tf.round`, `np.round`), and is written `<loc%04d>`; it
decodes to `d / 1023`, so a round trip is exact up to 0.5 / 1023. In
PaliGemma's vocabulary `<loc0000>` is token id 256000 (`PALIGEMMA_LOC_OFFSET`)
and the bins follow in order.

Detection text is PaliGemma's: each object is four loc tokens, a space and a
label, objects joined by `" ; "`:
`"<loc0123><loc0456><loc0789><loc1000> cat ; <loc0000><loc0000><loc0512><loc0512> dog"`.
"""

import re

import keras
import numpy as np
from keras import ops

NUM_LOC_TOKENS = 1024
PALIGEMMA_LOC_OFFSET = 256000

_TOKEN = re.compile(r"<(loc|seg)([0-9]+)>")
_TOKEN_RUN = re.compile(r"(?:\s*<(?:loc|seg)[0-9]+>)+\s*")
_FOUR_LOCS_FIRST = re.compile(r"\s*(?:<loc[0-9]+>\s*){4}")


def _is_numpy(*xs):
    return all(isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)) for x in xs)


def _as_float(x):
    """numpy array or keras tensor, float (ints become float32)."""
    if _is_numpy(x):
        x = np.asarray(x)
        return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    x = ops.convert_to_tensor(x)
    return x if keras.backend.is_float_dtype(x.dtype) else ops.cast(x, "float32")


def boxes_to_ids(boxes, offset=0, num_bins=NUM_LOC_TOKENS):
    """Quantises boxes to location token ids.

    Args:
        boxes: `(..., 4)` normalised `[y1, x1, y2, x2]`; values outside [0, 1]
            are clipped. numpy (non-finite values raise `ValueError`) or a
            tensor of the current backend (then the result is a tensor).
        offset: id of `<loc0000>`; 0 gives the bins, `PALIGEMMA_LOC_OFFSET`
            PaliGemma's token ids.
        num_bins: n, bins per coordinate (PaliGemma: 1024; a coarser grid
            suits small images and small data, e.g. 64 bins at 48 px).

    Returns:
        int32 `(..., 4)`, `offset + clip(round(v * (n - 1)), 0, n - 1)`.
    """
    if _is_numpy(boxes):
        boxes = np.asarray(boxes, np.float32)
        if not np.isfinite(boxes).all():
            raise ValueError("boxes must be finite")
        bins = np.clip(np.round(boxes * np.float32(num_bins - 1)), 0, num_bins - 1)
        return bins.astype(np.int32) + np.int32(offset)
    boxes = ops.cast(boxes, "float32")
    bins = ops.clip(ops.round(boxes * (num_bins - 1)), 0, num_bins - 1)
    return ops.cast(bins, "int32") + offset


def ids_to_boxes(ids, offset=0, num_bins=NUM_LOC_TOKENS):
    """Location token ids back to boxes, with a validity mask.

    A box is valid when all four ids lie in `[offset, offset + n - 1]` and
    `y2 >= y1`, `x2 >= x1` (a zero-area box is valid here; big_vision's RefCOCO
    evaluator rejects it, which gives the same IoU of 0).

    Args:
        ids: int `(..., 4)`, numpy or a backend tensor.
        offset: id of `<loc0000>`.
        num_bins: n, bins per coordinate (see `boxes_to_ids`).

    Returns:
        `(boxes, valid)`: float32 `(..., 4)` in [0, 1], all zeros where not
        valid (a zero-area box, IoU 0 with anything), and bool `(...,)`.
    """
    xp = np if _is_numpy(ids) else ops
    bins = xp.convert_to_tensor(ids) if xp is ops else np.asarray(ids)
    bins = bins - offset
    in_range = xp.all((bins >= 0) & (bins < num_bins), axis=-1)
    ordered = (bins[..., 2] >= bins[..., 0]) & (bins[..., 3] >= bins[..., 1])
    valid = in_range & ordered
    boxes = (bins.astype(np.float32) if xp is np else ops.cast(bins, "float32")) / (num_bins - 1)
    boxes = xp.where(valid[..., None], boxes, xp.zeros_like(boxes))
    return boxes, valid


def encode_box(boxes):
    """Boxes to loc-token strings.

    Args:
        boxes: `(4,)` or `(..., 4)` normalised `[y1, x1, y2, x2]` (numpy).

    Returns:
        A `str` such as `"<loc0123><loc0456><loc0789><loc1000>"` for one box,
        else a numpy str array of shape `(...)`.
    """
    ids = boxes_to_ids(boxes)
    flat = ["".join(f"<loc{d:04d}>" for d in row) for row in ids.reshape(-1, 4).tolist()]
    if ids.ndim == 1:
        return flat[0]
    return np.array(flat, dtype=str).reshape(ids.shape[:-1])


def boxes_to_text(boxes, labels=None):
    """One example's objects in PaliGemma detection format.

    Args:
        boxes: `(N, 4)` normalised `[y1, x1, y2, x2]` (numpy).
        labels: `None`, one `str` for every box, or `N` strings.

    Returns:
        `str`: `"<loc..>x4 label ; <loc..>x4 label"` (no label: just the
        tokens); `""` when `N == 0`.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if labels is None or isinstance(labels, str):
        labels = [labels] * len(boxes)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    objects = [encode_box(b) if label is None else f"{encode_box(b)} {label}"
               for b, label in zip(boxes, labels)]
    return " ; ".join(objects)


def decode_boxes(text):
    """Parses detection text into `[(box, label), ...]`, one per object.

    Objects are split on `";"`; empty ones are skipped. An object is valid when
    it starts with exactly four `<locDDDD>` tokens (four digits, at most 1023;
    whitespace between them is tolerated), holds no other loc token, and has
    `y2 >= y1`, `x2 >= x1`. `<segDDD>` tokens (PaliGemma's `segment` output)
    are dropped from the label. Never raises on malformed text.

    Args:
        text: one example's output, `str` or UTF-8 `bytes`.

    Returns:
        A list of `(box, label)`: `box` float32 `(4,)` in [0, 1], or `None`
        for a malformed object; `label` the object's text without loc/seg
        tokens, stripped (`""` if none). `[]` for empty text.
    """
    if isinstance(text, bytes):  # TensorFlow detokenizers give bytes
        text = text.decode("utf-8", errors="replace")
    results = []
    for segment in str(text).split(";"):
        if not segment.strip():
            continue
        tokens = _TOKEN.findall(segment)
        locs = [digits for kind, digits in tokens if kind == "loc"]
        label = _TOKEN_RUN.sub(" ", segment).strip()
        box = None
        if len(locs) == 4 and _FOUR_LOCS_FIRST.match(segment) and all(len(d) == 4 for d in locs):
            boxes, valid = ids_to_boxes(np.array([int(d) for d in locs]))
            if valid:
                box = boxes
        results.append((box, label))
    return results


def box_iou(a, b):
    """Pairwise intersection over union.

    Works on numpy (returns numpy) or on tensors of any Keras backend. Boxes
    with `y2 < y1` or `x2 < x1` count as empty; IoU with an empty union is 0.

    Args:
        a: `(..., N, 4)` `[y1, x1, y2, x2]`.
        b: `(..., M, 4)`, leading axes broadcast against `a`'s.

    Returns:
        `(..., N, M)` IoU in [0, 1].
    """
    xp = np if _is_numpy(a, b) else ops
    a, b = _as_float(a), _as_float(b)
    a, b = xp.expand_dims(a, -2), xp.expand_dims(b, -3)  # (..., N, 1, 4), (..., 1, M, 4)

    def area(y1, x1, y2, x2):
        return xp.maximum(y2 - y1, 0.0) * xp.maximum(x2 - x1, 0.0)

    inter = area(xp.maximum(a[..., 0], b[..., 0]), xp.maximum(a[..., 1], b[..., 1]),
                 xp.minimum(a[..., 2], b[..., 2]), xp.minimum(a[..., 3], b[..., 3]))
    union = area(a[..., 0], a[..., 1], a[..., 2], a[..., 3]) + area(
        b[..., 0], b[..., 1], b[..., 2], b[..., 3]) - inter
    # inter is 0 whenever union is 0: dividing by 1 there gives IoU 0, not 0 / 0.
    return inter / xp.where(union > 0, union, xp.ones_like(union))


def grounding_metrics(predicted, target, threshold=0.5):
    """Referring-expression / grounding scores: mean IoU and accuracy.

    Args:
        predicted: `N` predictions, each a `(4,)` box or `None` (as
            `decode_boxes` gives for malformed output), or a `(N, 4)` array.
            A missing box scores IoU 0.
        target: `(N, 4)` ground-truth boxes, same coordinates.
        threshold: a prediction is correct when IoU >= `threshold`.

    Returns:
        dict of floats: `"mean_iou"`, `"accuracy"` (fraction correct) and
        `"invalid"` (fraction of `None` predictions); NaN for `N == 0`.
    """
    target = np.asarray(target, np.float64).reshape(-1, 4)
    valid = np.array([p is not None for p in predicted], bool)
    if len(valid) != len(target):
        raise ValueError(f"{len(valid)} predictions but {len(target)} targets")
    if not len(target):
        return {"mean_iou": float("nan"), "accuracy": float("nan"), "invalid": float("nan")}
    boxes = np.array([p if p is not None else np.zeros(4) for p in predicted], np.float64).reshape(-1, 4)
    iou = np.where(valid, box_iou(boxes[:, None], target[:, None])[:, 0, 0], 0.0)
    return {"mean_iou": float(iou.mean()), "accuracy": float((iou >= threshold).mean()),
            "invalid": float((~valid).mean())}
