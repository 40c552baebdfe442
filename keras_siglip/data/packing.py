"""NaViT sequence packing ("Patch n' Pack", Dehghani et al. 2023) for NaFlex images.

The real patches of several images of any size share one fixed-length sequence,
so batches have static shapes and little padding, and a compiled `model.fit`
never retraces. The model keeps the images apart with `segment_ids`
(block-diagonal attention, per-image pooling).

One image (what `NaFlexImageConverter` gives per image, padded or not):
    "patches"       float (n, D)
    "patch_coords"  int (n, 2) as (y, x)
    "patch_mask"    int (n,), optional: 1 = real patch, 0 = padding (not packed)
    any other key   an extra per-image feature of fixed shape s (token ids, label, ...)
One packed sequence (N = sequence_length, S = max_images_per_sequence):
    "patches"       (N, D), zero on padding
    "patch_coords"  int32 (N, 2), (0, 0) on padding
    "segment_ids"   int32 (N,): 0 = padding, k = the k-th image placed (1..S)
    each extra      (S, *s): row k - 1 belongs to segment k; zero (b"") in empty slots
    "grid_shape"    int32 (S, 2): each image's full patch grid (h, w), taken before
                    token dropping (largest coordinates + 1, unless the image
                    brings its own "grid_shape"); (0, 0) in empty slots
    "image_mask"    int32 (S,): 1 = the slot holds an image

`FirstFitPacker` is the pure-numpy core; `pack_dataset` wraps it for tf.data.
"""

import dataclasses
import itertools

import numpy as np

_IMAGE_KEYS = ("patches", "patch_coords", "patch_mask")
_RESERVED_KEYS = ("segment_ids", "image_mask")


@dataclasses.dataclass
class PackingStats:
    """Running totals over the sequences a packer has emitted.

    `real_fraction` = tokens / (sequences * N), i.e. 1 - the padding fraction
    of the packed output; `baseline_real_fraction` = tokens / (images * N), the
    same for one image per sequence padded to N. `kept_fraction` = tokens /
    input_tokens, the share of real patches left by token dropping.
    """
    sequence_length: int
    images: int = 0
    sequences: int = 0
    tokens: int = 0  # real patches packed (after token dropping)
    input_tokens: int = 0  # real patches of the same images before dropping

    @property
    def real_fraction(self):
        return self.tokens / max(1, self.sequences * self.sequence_length)

    @property
    def baseline_real_fraction(self):
        return self.tokens / max(1, self.images * self.sequence_length)

    @property
    def images_per_sequence(self):
        return self.images / max(1, self.sequences)

    @property
    def kept_fraction(self):
        return self.tokens / max(1, self.input_tokens)

    def as_dict(self):
        return {**dataclasses.asdict(self), "real_fraction": self.real_fraction,
                "baseline_real_fraction": self.baseline_real_fraction,
                "images_per_sequence": self.images_per_sequence,
                "kept_fraction": self.kept_fraction}


def token_drop_indices(num_tokens, drop_rate, rng):
    """NaViT token dropping: sorted int indices of the patches one image keeps.

    drop_rate is a float in [0, 1] or a (low, high) range sampled uniformly
    per call; `max(1, round(num_tokens * (1 - rate)))` patches are kept,
    uniformly at random without replacement, in their original order.
    """
    if isinstance(drop_rate, (tuple, list)):
        low, high = drop_rate
        rate = rng.uniform(low, high)
    else:
        rate = drop_rate
    keep = max(1, round(num_tokens * (1.0 - rate)))
    return np.sort(rng.choice(num_tokens, keep, replace=False))


def _check_drop_rate(drop_rate):
    low, high = drop_rate if isinstance(drop_rate, (tuple, list)) else (drop_rate,) * 2
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"drop_rate must be a float in [0, 1] or a (low, high) "
                         f"range with 0 <= low <= high <= 1; got {drop_rate!r}.")


@dataclasses.dataclass(eq=False)
class _OpenSequence:
    images: list = dataclasses.field(default_factory=list)  # (patches, coords, extras)
    tokens: int = 0
    input_tokens: int = 0


class FirstFitPacker:
    """Greedy first-fit packing of NaFlex images into fixed-length sequences.

    Up to `buffer_size` sequences stay open, in the order they were opened.
    Each image goes into the first open sequence with `n` free tokens and a
    free image slot, else into a new sequence. A sequence that can take no
    more (N tokens or S images) is emitted at once. When a new sequence is
    needed and `buffer_size` are open, the fullest one (most tokens; the
    oldest among ties) is emitted first: it has the least room, so emitting it
    costs the fewest future placements and gives the least padding. `flush`
    emits the rest in opening order. A larger buffer packs tighter at the cost
    of memory and of images leaving further from their input order.

    With `drop_rate` (see `token_drop_indices`) each image first keeps a random
    subset of its real patches, seeded by `seed` (anything
    `np.random.default_rng` takes). An image with more than N real patches
    (after dropping) raises ValueError: truncating would silently lose part of
    it, so cap the NaFlex converter's patch count at N instead.

    Use `add(image)` and `flush()` (each returns a list of packed examples) or
    `pack(images)` (a generator); `stats` holds the running `PackingStats`
    (pass `stats` to share one object between packers).
    """

    def __init__(self, sequence_length, max_images_per_sequence, buffer_size=8,
                 drop_rate=None, seed=None, stats=None):
        if min(sequence_length, max_images_per_sequence, buffer_size) < 1:
            raise ValueError("sequence_length, max_images_per_sequence and "
                             "buffer_size must be positive.")
        if drop_rate is not None:
            _check_drop_rate(drop_rate)
        self.sequence_length = int(sequence_length)
        self.max_images_per_sequence = int(max_images_per_sequence)
        self.buffer_size = int(buffer_size)
        self.drop_rate = drop_rate
        self.stats = stats if stats is not None else PackingStats(self.sequence_length)
        self._rng = np.random.default_rng(seed)
        self._open = []
        self._extra_keys = None

    def add(self, example):
        """Adds one image (a dict, see the module docstring); returns the list
        of packed examples this emits (zero, one or two)."""
        image, n, input_n = self._prepare(example)
        n_max, s_max = self.sequence_length, self.max_images_per_sequence
        emitted = []
        index = next((i for i, seq in enumerate(self._open)
                      if seq.tokens + n <= n_max and len(seq.images) < s_max), None)
        if index is None:
            if len(self._open) == self.buffer_size:
                fullest = int(np.argmax([seq.tokens for seq in self._open]))
                emitted.append(self._emit(self._open.pop(fullest)))
            self._open.append(_OpenSequence())
            index = len(self._open) - 1
        seq = self._open[index]
        seq.images.append(image)
        seq.tokens += n
        seq.input_tokens += input_n
        if seq.tokens == n_max or len(seq.images) == s_max:
            emitted.append(self._emit(self._open.pop(index)))
        return emitted

    def flush(self):
        """Emits every open sequence, in opening order."""
        emitted = [self._emit(seq) for seq in self._open]
        self._open = []
        return emitted

    def pack(self, examples):
        """Packs an iterable of images; yields packed examples, then flushes."""
        for example in examples:
            yield from self.add(example)
        yield from self.flush()

    def _prepare(self, example):
        extras = {k: np.asarray(v) for k, v in example.items() if k not in _IMAGE_KEYS}
        extras.setdefault("grid_shape", None)  # filled in below once the real patches are known
        if self._extra_keys is None:
            if reserved := set(_RESERVED_KEYS) & extras.keys():
                raise ValueError(f"Input images must not have the output keys {sorted(reserved)}.")
            self._extra_keys = sorted(extras)
        elif sorted(extras) != self._extra_keys:
            raise ValueError(f"Every image needs the same extra features {self._extra_keys}; "
                             f"got {sorted(extras)}.")
        patches = np.asarray(example["patches"])
        coords = np.asarray(example["patch_coords"])
        if patches.ndim != 2 or coords.shape != (len(patches), 2):
            raise ValueError(f"Expected patches (n, D) and patch_coords (n, 2); got "
                             f"{patches.shape} and {coords.shape}.")
        if "patch_mask" in example:
            real = np.asarray(example["patch_mask"]).astype(bool)
            patches, coords = patches[real], coords[real]
        input_n = len(patches)
        if input_n == 0:
            raise ValueError("An image has no real patches.")
        if extras["grid_shape"] is None:
            # Before dropping: the model must resize positions to the full grid.
            extras["grid_shape"] = (coords.max(axis=0) + 1).astype(np.int32)
        if self.drop_rate is not None:
            keep = token_drop_indices(input_n, self.drop_rate, self._rng)
            patches, coords = patches[keep], coords[keep]
        if len(patches) > self.sequence_length:
            raise ValueError(
                f"An image has {len(patches)} real patches (after token dropping), more "
                f"than sequence_length={self.sequence_length}. Cap the NaFlex patch "
                f"count at sequence_length or raise sequence_length.")
        return (patches, coords.astype(np.int32), extras), len(patches), input_n

    def _emit(self, seq):
        pad = self.sequence_length - seq.tokens
        patches, coords, extras = zip(*seq.images)
        k, s_max = len(seq.images), self.max_images_per_sequence
        segment_ids = np.zeros(self.sequence_length, np.int32)
        segment_ids[:seq.tokens] = np.repeat(np.arange(1, k + 1), [len(p) for p in patches])
        out = {
            "patches": np.concatenate(
                patches + (np.zeros((pad, patches[0].shape[1]), patches[0].dtype),)),
            "patch_coords": np.concatenate(coords + (np.zeros((pad, 2), np.int32),)),
            "segment_ids": segment_ids,
        }
        for key in self._extra_keys:
            stacked = np.stack([e[key] for e in extras])
            fill = {"O": b"", "S": b"", "U": ""}.get(stacked.dtype.kind, 0)
            out[key] = np.full((s_max,) + stacked.shape[1:], fill, stacked.dtype)
            out[key][:k] = stacked
        out["image_mask"] = (np.arange(s_max) < k).astype(np.int32)
        self.stats.images += k
        self.stats.sequences += 1
        self.stats.tokens += seq.tokens
        self.stats.input_tokens += seq.input_tokens
        return out


def pack_dataset(dataset, sequence_length, max_images_per_sequence, buffer_size=8,
                 drop_rate=None, seed=None):
    """Packs a tf.data.Dataset of NaFlex images with `FirstFitPacker`.

    dataset: elements are dicts as in the module docstring; "patches" needs a
        static D (n may be None), extras need fully static shapes.
    Returns `(packed, stats)`: `packed` is a tf.data.Dataset of packed examples
    with fully static shapes (batch it with `drop_remainder=True` to keep the
    batch size static too); `stats` is a `PackingStats` totalling every pass
    over `packed` so far. Each pass runs a fresh packer; with a `seed`, pass p
    drops tokens with the generator seeded by (seed, p), so a run is
    reproducible yet epochs differ.

        packed, stats = pack_dataset(images, 256, 8, drop_rate=(0.0, 0.5), seed=0)
        model.fit(packed.batch(32, drop_remainder=True), epochs=3)
        stats.real_fraction, stats.baseline_real_fraction  # e.g. 0.95, 0.40

    NaViT draws each image's resolution before packing: make `images` with
    `sample_resolutions(raw_images, converter, side_range=(64, 384))`.
    """
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, dict) or not {"patches", "patch_coords"} <= spec.keys():
        raise TypeError(f"Expected dict elements with 'patches' and 'patch_coords'; "
                        f"got {spec}.")
    if spec["patches"].shape.rank != 2 or spec["patches"].shape[1] is None:
        raise ValueError(f"'patches' must be (n, D) with a static D; got {spec['patches']}.")
    n_max, s_max = int(sequence_length), int(max_images_per_sequence)
    signature = {
        "patches": tf.TensorSpec((n_max, spec["patches"].shape[1]), spec["patches"].dtype),
        "patch_coords": tf.TensorSpec((n_max, 2), tf.int32),
        "segment_ids": tf.TensorSpec((n_max,), tf.int32),
    }
    for key, value in spec.items():
        if key in _IMAGE_KEYS:
            continue
        if key in _RESERVED_KEYS:
            raise ValueError(f"Input images must not have the output key {key!r}.")
        if not isinstance(value, tf.TensorSpec) or not value.shape.is_fully_defined():
            raise ValueError(f"Extra feature {key!r} needs a static shape to be stacked "
                             f"per sequence; got {value}.")
        signature[key] = tf.TensorSpec((s_max, *value.shape), value.dtype)
    signature.setdefault("grid_shape", tf.TensorSpec((s_max, 2), tf.int32))
    signature["image_mask"] = tf.TensorSpec((s_max,), tf.int32)
    FirstFitPacker(n_max, s_max, buffer_size, drop_rate)  # validates the arguments now
    stats = PackingStats(n_max)
    passes = itertools.count()

    def generate():
        pass_seed = None if seed is None else (seed, next(passes))
        packer = FirstFitPacker(n_max, s_max, buffer_size, drop_rate, pass_seed, stats)
        yield from packer.pack(dataset.as_numpy_iterator())

    return tf.data.Dataset.from_generator(generate, output_signature=signature), stats
