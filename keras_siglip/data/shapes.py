"""Procedural "shapes" image-text data set (pure numpy, seeded, deterministic).

Each image shows 1-3 shapes of one colour and one type on a plain, slightly noisy
background. Example ``i`` of a data set depends only on ``(seed, i)``, so a
held-out split is simply another seed. Captions are varied and attribute-rich
("a small red circle in the top left on a gray background", "two blue squares at
the bottom", "a photo of an orange star") and cover the zero-shot prompts built
with :data:`PROMPT_TEMPLATES` and :func:`class_prompts`.
"""

import dataclasses

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
BACKGROUNDS = ("gray", "light blue", "beige", "dark green", "pink", "teal")
# Zero-shot prompt templates; "{}" takes a noun phrase *with* its article, e.g.
# "an orange star" (see `class_prompts`). Training captions contain these
# prompts literally (without trailing punctuation).
PROMPT_TEMPLATES = ("a photo of {}", "{}", "a drawing of {}")

# Nominal RGB of each colour name (each image jitters it by up to +-15 per channel).
COLOR_RGB = {"red": (220, 30, 30), "green": (40, 170, 40), "blue": (30, 70, 220),
             "yellow": (240, 220, 30), "purple": (140, 40, 170),
             "orange": (250, 140, 20), "white": (245, 245, 245), "black": (20, 20, 20)}
BACKGROUND_RGB = {"gray": (128, 128, 128), "light blue": (165, 205, 240),
                  "beige": (225, 210, 175), "dark green": (25, 75, 45),
                  "pink": (245, 175, 200), "teal": (40, 130, 140)}
_MIN_COLOR_DISTANCE = 110.0  # min RGB distance of nominal shape and background colours
_ALLOWED_BACKGROUNDS = {
    c: tuple(b for b in BACKGROUNDS if np.linalg.norm(
        np.subtract(COLOR_RGB[c], BACKGROUND_RGB[b])) >= _MIN_COLOR_DISTANCE)
    for c in COLORS}
_DIAMETER = {"small": 0.26, "medium": 0.34, "large": 0.46}  # of the shorter side
_COUNT_PROBS = (0.5, 0.25, 0.25)  # for 1, 2, 3 shapes (before fitting)
_COUNT_SIZES = {1: SIZES, 2: ("small", "medium"), 3: ("small",)}
_BANDS = ("top", "bottom", "left", "right")  # positions used when count > 1
_COLOR_JITTER, _BACKGROUND_JITTER, _PIXEL_NOISE = 15, 10, 4
_NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
_PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
_POSITION_PHRASES = {
    **{p: (f"in the {p}", f"in the {p} corner", f"at the {p}")
       for p in ("top left", "top right", "bottom left", "bottom right")},
    "top": ("at the top", "near the top"), "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side"), "right": ("on the right", "on the right side"),
    "center": ("in the center", "in the middle")}
_TEMPLATES = ("{}", "{}", "a photo of {}", "a drawing of {}", "an image of {}",
              "a picture of {}", "there {be} {}", "{} on {bg} background",
              "a photo of {} on {bg} background", "{} against {bg} background")


@dataclasses.dataclass(frozen=True)
class ShapeAttributes:
    """Attributes of one image. `position` is one of POSITIONS for a single
    shape (3x3 cell of its centre) and one of "top"/"bottom"/"left"/"right"
    (the third of the image holding all centres) when count > 1."""
    color: str
    shape: str
    size: str
    position: str
    count: int
    background: str
    number: int = None  # a two-digit number written in a corner (`number_prob`)


def with_article(phrase):
    """Adds "a"/"an": "red circle" -> "a red circle", "orange star" -> "an orange star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def class_names():
    """The 48 zero-shot class names "<color> <shape>", colour-major order."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def class_label(attrs):
    """Class name ("red circle") of an example; its id is its index in class_names()."""
    return f"{attrs.color} {attrs.shape}"


def class_id(attrs):
    return COLORS.index(attrs.color) * len(SHAPES) + SHAPES.index(attrs.shape)


def class_prompts(template="a photo of {}"):
    """Zero-shot prompts for all classes, e.g. "a photo of an orange star"."""
    return [template.format(with_article(name)) for name in class_names()]


def position_phrases(position):
    """The phrases a caption may use for `position`, e.g. "top" -> ("at the top", "near the top")."""
    return _POSITION_PHRASES[position]


def caption(attrs, rng, drop_prob=0.5):
    """Random training caption: lowercase, no trailing punctuation. Always has
    the colour and (plural when count > 1) shape word; the size word and the
    position phrase are each kept with probability 1 - drop_prob."""
    noun = f"{attrs.color} {attrs.shape if attrs.count == 1 else _PLURALS[attrs.shape]}"
    if rng.random() >= drop_prob:
        noun = f"{attrs.size} {noun}"
    phrase = with_article(noun) if attrs.count == 1 else f"{_NUMBER_WORDS[attrs.count]} {noun}"
    if rng.random() >= drop_prob:
        options = _POSITION_PHRASES[attrs.position]
        phrase += " " + options[rng.integers(len(options))]
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return template.format(phrase, be="is" if attrs.count == 1 else "are",
                           bg=with_article(attrs.background))


def _shape_mask(shape, u, v):
    """Boolean mask of `shape` in coordinates (u, v) normalised by the radius
    (centre at 0, v pointing down); every shape fits in [-1, 1]^2."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # pointing up, apex at v = -1, base at v = 0.73
        return (v <= 0.73) & (np.abs(u) * 1.73 <= v + 1.0)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "star":  # five points, one pointing up; fold to one sector
        sector = 2 * np.pi / 5
        phi = np.abs((np.arctan2(u, -v) + sector / 2) % sector - sector / 2)
        rho = np.sqrt(u * u + v * v)
        x, y = rho * np.cos(phi), rho * np.sin(phi)
        qx, qy = 0.45 * np.cos(sector / 2), 0.45 * np.sin(sector / 2)  # inner vertex
        return (qx - 1.0) * y - qy * (x - 1.0) >= 0.0  # origin side of outer->inner edge
    raise ValueError(f"Unknown shape {shape!r}")


def _centre_range(position, side, r, axis, band):
    """Allowed interval (pixels) of a centre along `axis` (0 = y, 1 = x): the
    third of the image named by `position`, anywhere for the free axis of a band."""
    words = position.split()
    lo, hi = ("top", "bottom") if axis == 0 else ("left", "right")
    if lo in words:
        third = 0
    elif hi in words:
        third = 2
    elif band:  # e.g. "top" with several shapes: x is free
        return r, side - r
    else:  # "center", or the middle column of a single shape "top"
        third = 1
    return max(r, third * side / 3), min(side - r, (third + 1) * side / 3)


def _place(rng, count, position, size, h, w):
    """Centres and radii (pixels) of up to `count` shapes with centres in
    `position`. Several shapes are spread along the free axis of their band
    with disjoint bounding squares; if they do not fit, fewer are drawn (a
    single remaining shape then goes to the 3x3 cell named by `position`)."""
    base = _DIAMETER[size] * min(h, w) / 2
    for n in range(count, 0, -1):
        radii = base * rng.uniform(0.92, 1.08, n)
        r = radii.max()
        (y0, y1), (x0, x1) = (_centre_range(position, h, r, 0, n > 1),
                              _centre_range(position, w, r, 1, n > 1))
        cy, cx = rng.uniform(y0, y1, n), rng.uniform(x0, x1, n)
        if n > 1:
            free, lo, hi = (cx, x0, x1) if position in ("top", "bottom") else (cy, y0, y1)
            slack = hi - lo - (n - 1) * (2 * r + 1)
            if slack < 0:
                continue
            free[:] = lo + np.sort(rng.uniform(0, slack, n)) + np.arange(n) * (2 * r + 1)
        return cy, cx, radii


def render(attrs, rng, height, width):
    """Draws `attrs` into a uint8 (height, width, 3) image. Returns (image,
    boxes): float32 (n, 4) tight normalised [y1, x1, y2, x2] per drawn shape and
    the attributes with `count` set to the number n actually drawn."""
    bg = np.array(BACKGROUND_RGB[attrs.background]) + rng.integers(
        -_BACKGROUND_JITTER, _BACKGROUND_JITTER + 1, 3)
    fg = np.array(COLOR_RGB[attrs.color]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3)
    image = np.empty((height, width, 3), np.int16)
    image[:] = bg
    cy, cx, radii = _place(rng, attrs.count, attrs.position, attrs.size, height, width)
    boxes = []
    for y, x, r in zip(cy, cx, radii):
        y0, y1 = max(int(y - r) - 1, 0), min(int(y + r) + 2, height)
        x0, x1 = max(int(x - r) - 1, 0), min(int(x + r) + 2, width)
        v = ((np.arange(y0, y1) + 0.5 - y) / r)[:, None]
        u = ((np.arange(x0, x1) + 0.5 - x) / r)[None, :]
        mask = _shape_mask(attrs.shape, u, v)
        image[y0:y1, x0:x1][mask] = fg
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes.append([(y0 + rows[0]) / height, (x0 + cols[0]) / width,
                      (y0 + rows[-1] + 1) / height, (x0 + cols[-1] + 1) / width])
    image += rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, image.shape, dtype=np.int16)
    attrs = dataclasses.replace(attrs, count=len(boxes))
    return np.clip(image, 0, 255).astype(np.uint8), np.array(boxes, np.float32), attrs


# 3 x 5 pixel digits (rows top to bottom), drawn at 2x: a glyph is 6 x 10 pixels.
_DIGITS = ("111101101101111", "010110010010111", "111001111100111", "111001111001111",
           "101101111001001", "111100111001111", "111100111101111", "111001001001001",
           "111101111101111", "111101111001111")
_GLYPH_SCALE = 2


def draw_number(image, number, background):
    """Writes `number` (digits, 2x-scaled 3 x 5 font, 1 px apart) into the corner
    of `image` (uint8 (H, W, 3)) that overlaps the shapes least; black or white
    ink, whichever contrasts with `background` (a BACKGROUNDS name). In place."""
    digits = [np.array([int(b) for b in _DIGITS[int(d)]], bool).reshape(5, 3) for d in str(number)]
    glyph = np.concatenate([np.pad(g, ((0, 0), (0, 1)))[:, : 4 if i < len(digits) - 1 else 3]
                            for i, g in enumerate(digits)], axis=1)
    glyph = np.kron(glyph, np.ones((_GLYPH_SCALE, _GLYPH_SCALE), bool))
    h, w = glyph.shape
    height, width = image.shape[:2]
    if h + 4 > height or w + 4 > width:
        raise ValueError(f"A {image.shape[:2]} image is too small for the number {number}.")
    plain = np.all(np.abs(image.astype(np.int16) - np.array(BACKGROUND_RGB[background])) <= 2 * _BACKGROUND_JITTER, -1)
    corners = [(2, 2), (2, width - w - 2), (height - h - 2, 2), (height - h - 2, width - w - 2)]
    y, x = max(corners, key=lambda c: plain[c[0] : c[0] + h, c[1] : c[1] + w].sum())
    ink = 0 if np.mean(BACKGROUND_RGB[background]) > 110 else 255
    image[y : y + h, x : x + w][glyph] = ink
    return image


def sample_attributes(rng):
    """Random ShapeAttributes (count may still shrink when rendering)."""
    color = COLORS[rng.integers(len(COLORS))]
    count = int(rng.choice(3, p=_COUNT_PROBS)) + 1
    sizes, positions = _COUNT_SIZES[count], POSITIONS if count == 1 else _BANDS
    backgrounds = _ALLOWED_BACKGROUNDS[color]
    return ShapeAttributes(
        color=color, shape=SHAPES[rng.integers(len(SHAPES))],
        size=sizes[rng.integers(len(sizes))],
        position=positions[rng.integers(len(positions))], count=count,
        background=backgrounds[rng.integers(len(backgrounds))])


class ShapesDataset:
    """`num_examples` lazily generated examples; example i depends only on (seed, i).

    image_size=int gives square images; image_size=None draws height and width
    independently and uniformly from [min_side, max_side] per example. With
    number_prob > 0 that fraction of the images also shows a two-digit number
    (`attributes.number`, for text-reading tasks); the other outputs do not
    change.
    """

    def __init__(self, num_examples, seed=0, image_size=48, min_side=32,
                 max_side=160, caption_drop_prob=0.5, number_prob=0.0):
        self.num_examples, self.seed, self.image_size = num_examples, seed, image_size
        self.min_side, self.max_side = min_side, max_side
        self.caption_drop_prob = caption_drop_prob
        self.number_prob = number_prob

    def __len__(self):
        return self.num_examples

    def __getitem__(self, i):
        """Returns {"image": uint8 (H, W, 3), "caption": str, "label": int,
        "boxes": float32 (count, 4) [y1, x1, y2, x2] in [0, 1],
        "attributes": ShapeAttributes}."""
        if not -self.num_examples <= i < self.num_examples:
            raise IndexError(i)
        i = int(i) % self.num_examples
        rng = np.random.default_rng([self.seed, i])
        if self.image_size is None:
            h, w = (int(s) for s in rng.integers(self.min_side, self.max_side + 1, 2))
        else:
            h = w = self.image_size
        image, boxes, attrs = render(sample_attributes(rng), rng, h, w)
        text = caption(attrs, rng, self.caption_drop_prob)
        # Drawn last, so the rest of the example is the same with or without numbers.
        if self.number_prob > 0 and rng.random() < self.number_prob:
            attrs = dataclasses.replace(attrs, number=int(rng.integers(10, 100)))
            draw_number(image, attrs.number, attrs.background)
        return {"image": image, "caption": text, "label": class_id(attrs), "boxes": boxes,
                "attributes": attrs}

    def arrays(self):
        """All examples stacked (fixed image_size only): {"images": uint8
        (N, S, S, 3), "captions": str (N,), "labels": int32 (N,), "boxes":
        float32 (N, 3, 4) padded with -1, "num_boxes": int32 (N,)}."""
        if self.image_size is None:
            raise ValueError("arrays() needs a fixed image_size.")
        n, s = self.num_examples, self.image_size
        out = {"images": np.empty((n, s, s, 3), np.uint8), "captions": [],
               "labels": np.empty((n,), np.int32),
               "boxes": np.full((n, 3, 4), -1.0, np.float32),
               "num_boxes": np.empty((n,), np.int32)}
        for i in range(n):
            ex = self[i]
            out["images"][i], out["labels"][i] = ex["image"], ex["label"]
            out["captions"].append(ex["caption"])
            out["boxes"][i, :len(ex["boxes"])] = ex["boxes"]
            out["num_boxes"][i] = len(ex["boxes"])
        out["captions"] = np.array(out["captions"])
        return out

    def as_tf_dataset(self, include_boxes=False):
        """tf.data.Dataset of {"images": uint8 (H, W, 3), "captions": tf.string,
        "labels": int32} in index order (H = W = None in varied mode). With
        include_boxes, also "boxes": float32 (3, 4) padded with -1 and
        "num_boxes": int32."""
        import tensorflow as tf

        def generate():
            for i in range(self.num_examples):
                ex = self[i]
                item = {"images": ex["image"], "captions": ex["caption"],
                        "labels": np.int32(ex["label"])}
                if include_boxes:
                    boxes = np.full((3, 4), -1.0, np.float32)
                    boxes[:len(ex["boxes"])] = ex["boxes"]
                    item.update(boxes=boxes, num_boxes=np.int32(len(ex["boxes"])))
                yield item

        s = self.image_size
        signature = {"images": tf.TensorSpec((s, s, 3), tf.uint8),
                     "captions": tf.TensorSpec((), tf.string),
                     "labels": tf.TensorSpec((), tf.int32)}
        if include_boxes:
            signature.update(boxes=tf.TensorSpec((3, 4), tf.float32),
                             num_boxes=tf.TensorSpec((), tf.int32))
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
