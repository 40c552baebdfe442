"""PaliGemma output text -> structured results (detection boxes).

Detection output (PaliGemma `detect {thing} ; {thing}`): each object is four
`<locNNNN>` tokens `y1 x1 y2 x2` (bins of `round(v * 1023)`) and a label,
objects joined by `" ; "`, e.g.
`"<loc0102><loc0204><loc0716><loc0818> cat ; <loc0000><loc0000><loc0511><loc0511> dog"`.
Parsing reuses `keras_siglip.layers.boxes.decode_boxes`: malformed objects (not
exactly four leading 4-digit loc tokens, bins > 1023, y2 < y1 or x2 < x1) are
dropped, so garbage gives fewer or no boxes and never an exception.
"""

import dataclasses

import numpy as np

from keras_siglip.layers.boxes import decode_boxes


@dataclasses.dataclass
class Detections:
    """One image's parsed detections.

    Attributes:
        boxes: float32 `(n, 4)` `[y1, x1, y2, x2]`, normalised to [0, 1] or in
            pixels (`parse_detections(image_size=...)`).
        labels: `n` label strings (may be "").
        text: the raw output text.
    """

    boxes: np.ndarray
    labels: list
    text: str

    def __len__(self):
        return len(self.labels)


def parse_detections(text, image_size=None):
    """Parse one example's detection text into boxes and labels.

    Args:
        text: the generated string (`str`, `bytes`, or anything `str()`-able).
        image_size: None for normalised `[y1, x1, y2, x2]` in [0, 1], or the
            image's `(height, width)` to get pixel coordinates (`y * height`,
            `x * width`).

    Returns:
        A `Detections` with the valid objects only. Never raises on model output.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = "" if text is None else str(text)
    try:
        objects = decode_boxes(text)
    except Exception:  # defensive: model output must never crash a pipeline
        objects = []
    kept = [(box, label) for box, label in objects if box is not None]
    boxes = np.array([box for box, _ in kept], np.float32).reshape(-1, 4)
    if image_size is not None:
        height, width = (float(s) for s in image_size)
        boxes = boxes * np.array([height, width, height, width], np.float32)
    return Detections(boxes=boxes, labels=[label for _, label in kept], text=text)


def detections_to_text(boxes, labels, image_size=None):
    """The inverse of `parse_detections`: boxes (normalised, or pixels of
    `image_size = (height, width)`) and labels -> PaliGemma detection text."""
    from keras_siglip.layers.boxes import boxes_to_text

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if image_size is not None:
        height, width = (float(s) for s in image_size)
        boxes = boxes / np.array([height, width, height, width], np.float32)
    return boxes_to_text(boxes, list(labels))
