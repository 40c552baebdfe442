"""PaliGemma segmentation: `<seg>` tokens -> masks (the OID VQ-VAE decoder).

PaliGemma's `segment {things}` output gives each object as four `<locDDDD>`
tokens (its box, `keras_siglip.layers.boxes`), sixteen `<segDDD>` tokens and a
label, objects joined by `" ; "`:

    "<loc0102><loc0205><loc0880><loc0700><seg012>...<seg097> cat ; ..."

The sixteen codes index a 128-entry codebook of a VQ-VAE trained on Open
Images masks (Ning et al. 2023, "All in Tokens"; big_vision's `vae-oid.npz`,
which keeps the PyTorch parameter names). Decoding (big_vision
`evaluators/proj/paligemma/transfers/segmentation.py`, `reconstruct_masks`):

    codes (B, 16)       -> codebook rows, row-major 4x4 grid  (B, 4, 4, C)
    decoder.0           Conv 1x1, C -> 128, ReLU
    decoder.2, .3       2x ResBlock(128): x + [Conv 3x3 (pad 1), ReLU,
                        Conv 3x3 (pad 1), ReLU, Conv 1x1](x)   (`.net.0/2/4`)
    decoder.4/6/8/10    4x [ConvTranspose k4 s2 (PyTorch padding 1), ReLU]
                        to 128, 64, 32, 16 channels: 4 -> 8 -> 16 -> 32 -> 64
    decoder.12          Conv 1x1, 16 -> 1
                        -> (B, 64, 64) mask logits, roughly in [-1, 1]

Weights in `vae-oid.npz` (PyTorch layouts): `_vq_vae._embedding (128, C)`,
`decoder.{i}.weight` `(out, in, kh, kw)` for convolutions and `(in, out, kh,
kw)` for the transposed ones, `decoder.{i}.bias (out,)`; the file also holds
the encoder (`encoder.*`, mask -> codes), which decoding does not use. C is
read from the file (512 in the released weights, per public ports).

A mask is pasted as big_vision's evaluator does: the box `d / 1023` in
[0, 1] becomes pixels with `int(v * size)` (truncation), the 64x64 output is
resized to the box with PIL's bilinear filter and thresholded at `> 0`.
(The PaliGemma demo Space instead divides by 1024, rounds, and keeps soft
masks; the evaluator's rule is the one the published mIoU numbers used.)
"""

import os
import re
import zipfile

import keras
import numpy as np
from keras import ops

NUM_SEG_TOKENS = 128
NUM_CODES_PER_MASK = 16
MASK_SIZE = 64
# PaliGemma vocabulary: 256,000 Gemma pieces, `<loc0000>`..`<loc1023>`, then
# `<seg000>`..`<seg127>`.
PALIGEMMA_LOC_OFFSET = 256_000
PALIGEMMA_SEG_OFFSET = 257_024
_NUM_LOC = 1024

_CODEBOOK = "_vq_vae._embedding"
_RESBLOCKS = (2, 3)
_UPSAMPLES = (4, 6, 8, 10)
_HIDDEN = 128
_UPSAMPLE_WIDTHS = (128, 64, 32, 16)


def _expected_shapes(embedding_dim, num_codes=NUM_SEG_TOKENS):
    """`{npz name: PyTorch shape}` of every weight the decoder reads."""
    shapes = {_CODEBOOK: (num_codes, embedding_dim)}

    def conv(name, out, inp, k):
        shapes[f"{name}.weight"] = (out, inp, k, k)
        shapes[f"{name}.bias"] = (out,)

    conv("decoder.0", _HIDDEN, embedding_dim, 1)
    for block in _RESBLOCKS:
        for i, k in ((0, 3), (2, 3), (4, 1)):
            conv(f"decoder.{block}.net.{i}", _HIDDEN, _HIDDEN, k)
    inp = _HIDDEN
    for index, out in zip(_UPSAMPLES, _UPSAMPLE_WIDTHS):
        shapes[f"decoder.{index}.weight"] = (inp, out, 4, 4)  # ConvTranspose2d: (in, out, kh, kw)
        shapes[f"decoder.{index}.bias"] = (out,)
        inp = out
    conv("decoder.12", 1, inp, 1)
    return shapes


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaMaskDecoder(keras.layers.Layer):
    """PaliGemma's VQ-VAE mask decoder: 16 `<seg>` codes -> 64x64 mask logits.

    Args:
        embedding_dim: C, the codebook width (512 in `vae-oid.npz`).
        num_codes: codebook size (128 `<segDDD>` tokens).

    Call:
        `codes`: int `(B, 16)` in `[0, num_codes)` (`<segDDD>` numbers, not
        token ids), row-major over a 4x4 grid. Returns float `(B, 64, 64)`
        logits; `> 0` is inside the object.

    Load the published weights with `PaliGemmaMaskDecoder.from_npz(path)`
    (or `load_mask_decoder`).
    """

    def __init__(self, embedding_dim=512, num_codes=NUM_SEG_TOKENS, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.num_codes = int(num_codes)
        dtype = self.dtype_policy

        def conv(filters, size, name):
            return keras.layers.Conv2D(filters, size, padding="same", name=name, dtype=dtype)

        self.conv_in = conv(_HIDDEN, 1, "conv_in")
        # Two residual blocks of three convolutions each, flat: block b is [3b, 3b + 3).
        self.res_convs = [
            conv(_HIDDEN, size, f"res_block_{b}_conv_{i}")
            for b in range(len(_RESBLOCKS)) for i, size in enumerate((3, 3, 1))
        ]
        # Keras "same" for kernel 4, stride 2 pads the dilated input by 2 on each
        # side, which is PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1).
        self.upsamples = [
            keras.layers.Conv2DTranspose(w, 4, strides=2, padding="same", name=f"upsample_{i}", dtype=dtype)
            for i, w in enumerate(_UPSAMPLE_WIDTHS)
        ]
        self.conv_out = conv(1, 1, "conv_out")

    def build(self, input_shape=None):
        self.codebook = self.add_weight(
            name="codebook", shape=(self.num_codes, self.embedding_dim), initializer="random_normal"
        )
        shape = (None, 4, 4, self.embedding_dim)
        self.conv_in.build(shape)
        shape = (None, 4, 4, _HIDDEN)
        for layer in self.res_convs:
            layer.build(shape)
        side, channels = 4, _HIDDEN
        for layer, width in zip(self.upsamples, _UPSAMPLE_WIDTHS):
            layer.build((None, side, side, channels))
            side, channels = 2 * side, width
        self.conv_out.build((None, side, side, channels))
        self.built = True

    def embed_codes(self, codes):
        """`(B, 16)` codes -> `(B, 4, 4, C)` codebook rows."""
        codes = ops.cast(codes, "int32")
        rows = ops.take(self.codebook, ops.reshape(codes, (-1,)), axis=0)
        return ops.reshape(rows, (-1, 4, 4, self.embedding_dim))

    def call(self, codes):
        x = ops.relu(self.conv_in(self.embed_codes(codes)))
        for b in range(0, len(self.res_convs), 3):
            conv_0, conv_1, conv_2 = self.res_convs[b:b + 3]
            x = x + conv_2(ops.relu(conv_1(ops.relu(conv_0(x)))))
        for layer in self.upsamples:
            x = ops.relu(layer(x))
        return self.conv_out(x)[..., 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], MASK_SIZE, MASK_SIZE)

    def decode(self, codes, batch_size=64):
        """numpy `(N, 16)` codes -> numpy float32 `(N, 64, 64)` logits (N may be 0)."""
        codes = np.asarray(codes, np.int32).reshape(-1, NUM_CODES_PER_MASK)
        if np.any((codes < 0) | (codes >= self.num_codes)):
            raise ValueError(f"Mask codes must lie in [0, {self.num_codes}); got {codes.min()}..{codes.max()}.")
        out = [ops.convert_to_numpy(self(codes[i:i + batch_size])) for i in range(0, len(codes), batch_size)]
        if not out:
            return np.zeros((0, MASK_SIZE, MASK_SIZE), np.float32)
        return np.concatenate(out).astype(np.float32)

    # -- published weights ------------------------------------------------------

    def _slots(self):
        """`{npz name: (keras variable, PyTorch -> Keras transform)}`."""
        def conv_kernel(w):  # (out, in, kh, kw) -> (kh, kw, in, out)
            return np.transpose(w, (2, 3, 1, 0))

        def transposed_kernel(w):  # (in, out, kh, kw) -> Keras Conv2DTranspose (kh, kw, out, in)
            return np.transpose(w, (2, 3, 1, 0))

        def same(w):
            return w

        slots = {_CODEBOOK: (self.codebook, same)}

        def conv(name, layer, kernel=conv_kernel):
            slots[f"{name}.weight"] = (layer.kernel, kernel)
            slots[f"{name}.bias"] = (layer.bias, same)

        conv("decoder.0", self.conv_in)
        for b, block in enumerate(_RESBLOCKS):
            for i, layer in zip((0, 2, 4), self.res_convs[3 * b:3 * b + 3]):
                conv(f"decoder.{block}.net.{i}", layer)
        for index, layer in zip(_UPSAMPLES, self.upsamples):
            conv(f"decoder.{index}", layer, transposed_kernel)
        conv("decoder.12", self.conv_out)
        return slots

    def load_weights_dict(self, weights, source="the weights"):
        """Assign a `{PyTorch name: array}` dict (the `vae-oid.npz` names).

        Every decoder weight must be present with its exact shape; an unknown
        `decoder.*` name is an error too (`encoder.*` and other `_vq_vae.*`
        entries, which decoding does not use, are ignored). Nothing is
        assigned unless everything fits.
        """
        from keras_siglip.convert.common import CheckpointMismatch

        expected = _expected_shapes(self.embedding_dim, self.num_codes)
        missing = sorted(name for name in expected if name not in weights)
        misshaped = sorted(
            f"{name}: file {tuple(np.shape(weights[name]))} vs model {expected[name]}"
            for name in expected if name in weights and tuple(np.shape(weights[name])) != expected[name]
        )
        unexpected = sorted(name for name in weights if name.startswith("decoder.") and name not in expected)
        if missing or misshaped or unexpected:
            lines = [f"{source} does not fit PaliGemma's mask decoder (embedding_dim={self.embedding_dim}):"]
            for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
                if names:
                    lines.append(f"  {label} ({len(names)}): " + ", ".join(names))
            raise CheckpointMismatch("\n".join(lines))
        for name, (variable, transform) in self._slots().items():
            variable.assign(transform(_as_float32(weights[name])))
        return self

    @classmethod
    def from_npz(cls, path, dtype=None):
        """The decoder of big_vision's `vae-oid.npz` (or any file of that layout)."""
        path = os.fspath(path)
        weights = _read_npz(path)
        if _CODEBOOK not in weights:
            from keras_siglip.convert.common import CheckpointMismatch

            found = ", ".join(sorted(weights)[:6]) or "none"
            raise CheckpointMismatch(
                f"{path} has no {_CODEBOOK!r}: not PaliGemma's segmentation VQ-VAE "
                f"(vae-oid.npz). Keys found: {found}."
            )
        num_codes, embedding_dim = np.shape(weights[_CODEBOOK])
        decoder = cls(embedding_dim=embedding_dim, num_codes=num_codes, dtype=dtype)
        decoder.build()
        return decoder.load_weights_dict(weights, source=path)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, num_codes=self.num_codes)
        return config


def load_mask_decoder(path, dtype=None):
    """`PaliGemmaMaskDecoder.from_npz(path)`."""
    return PaliGemmaMaskDecoder.from_npz(path, dtype=dtype)


def _as_float32(value):
    value = np.asarray(value)
    if value.dtype.kind == "V" and value.dtype.itemsize == 2:  # bfloat16 stored as void
        import ml_dtypes

        value = value.view(ml_dtypes.bfloat16)
    return value.astype(np.float32)


def _read_npz(path):
    """All arrays of an `.npz` (nothing unpickled), with clear errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No mask decoder weights at {path}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive of named weights")
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable .npz of named weights ({error}).") from error


# -- parsing model output -----------------------------------------------------------

_TOKEN = re.compile(r"<(loc|seg)(\d+)>")
_TOKEN_RUN = re.compile(r"(?:\s*<(?:loc|seg)\d+>)+\s*")


def _ids_to_text(ids):
    """Token ids -> text of their `<loc>` / `<seg>` tokens; other ids become
    a space (their text needs the tokenizer)."""
    pieces = []
    for token in np.asarray(ids).reshape(-1).tolist():
        if PALIGEMMA_LOC_OFFSET <= token < PALIGEMMA_LOC_OFFSET + _NUM_LOC:
            pieces.append(f"<loc{token - PALIGEMMA_LOC_OFFSET:04d}>")
        elif PALIGEMMA_SEG_OFFSET <= token < PALIGEMMA_SEG_OFFSET + NUM_SEG_TOKENS:
            pieces.append(f"<seg{token - PALIGEMMA_SEG_OFFSET:03d}>")
        else:
            pieces.append(" ")
    return "".join(pieces)


def parse_segmentation_tokens(output):
    """Objects of one `segment` / `detect` output, without decoding masks.

    Args:
        output: text (`str` or UTF-8 `bytes`) or a 1-D sequence of PaliGemma
            token ids (`<loc>` and `<seg>` ids are read; other ids separate
            objects but give no label: detokenize them first to keep labels).

    Returns:
        A list of dicts, one per well-formed object, in order: `"box"` float32
        `(4,)` normalised `[y1, x1, y2, x2]` (`d / 1023`), `"codes"` int32
        `(16,)` or None (no or malformed `<seg>` tokens), `"label"` str.

    An object needs exactly four `<locDDDD>` tokens (four digits, at most 1023)
    before its other tokens, with `y2 > y1` and `x2 > x1`; anything else is
    skipped. Its mask codes are the `<segDDD>` tokens right after them: exactly
    16, each at most 127, else `codes` is None. Objects are split on `";"`.
    Never raises on malformed output.
    """
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    if not isinstance(output, str):
        try:
            output = _ids_to_text(output)
        except (TypeError, ValueError):
            return []
    objects = []
    for part in output.split(";"):
        tokens = [(m[1], m[2], m.start()) for m in _TOKEN.finditer(part)]
        if len(tokens) < 4 or any(kind != "loc" for kind, _, _ in tokens[:4]):
            continue
        if part[: tokens[0][2]].strip():  # text before the box: not an object of this format
            continue
        locs = [digits for _, digits, _ in tokens[:4]]
        if any(len(d) != 4 or int(d) >= _NUM_LOC for d in locs):
            continue
        rest = tokens[4:]
        if any(kind == "loc" for kind, _, _ in rest):
            continue
        y1, x1, y2, x2 = (int(d) for d in locs)
        if not (y2 > y1 and x2 > x1):
            continue
        codes = None
        segs = [digits for _, digits, _ in rest]
        if len(segs) == NUM_CODES_PER_MASK and all(len(d) == 3 and int(d) < NUM_SEG_TOKENS for d in segs):
            codes = np.array([int(d) for d in segs], np.int32)
        objects.append(dict(
            box=np.array([y1, x1, y2, x2], np.float32) / np.float32(_NUM_LOC - 1),
            codes=codes,
            label=_TOKEN_RUN.sub(" ", part).strip(),
        ))
    return objects


def box_to_pixels(box, height, width):
    """Normalised `[y1, x1, y2, x2]` -> int pixel bounds (big_vision: `int(v * size)`)."""
    y1, x1, y2, x2 = (float(v) for v in box)
    return int(y1 * height), int(x1 * width), int(y2 * height), int(x2 * width)


def paste_mask(mask64, box, height, width, threshold=0.0):
    """A 64x64 mask (logits) into a full-image boolean mask.

    The box (normalised `[y1, x1, y2, x2]`) is converted with
    `box_to_pixels`; the mask is resized to the box with PIL's bilinear
    filter (float32) and thresholded `> threshold`. A box that is empty in
    pixels gives an all-False mask.

    Returns:
        bool `(height, width)`.
    """
    from PIL import Image

    full = np.zeros((int(height), int(width)), bool)
    y1, x1, y2, x2 = box_to_pixels(box, height, width)
    y1, x1 = max(y1, 0), max(x1, 0)
    y2, x2 = min(y2, int(height)), min(x2, int(width))
    if y2 <= y1 or x2 <= x1:
        return full
    resized = Image.fromarray(np.asarray(mask64, np.float32)).resize((x2 - x1, y2 - y1), resample=Image.BILINEAR)
    full[y1:y2, x1:x2] = np.asarray(resized) > threshold
    return full


def parse_segmentation(output, decoder, height, width, threshold=0.0):
    """Boxes, labels and full-image masks of one PaliGemma `segment` output.

    Args:
        output: text or token ids (see `parse_segmentation_tokens`).
        decoder: a `PaliGemmaMaskDecoder` (e.g. `load_mask_decoder("vae-oid.npz")`),
            or None to parse boxes only.
        height, width: the image size the masks are pasted at (the original
            image, whatever size the model saw).
        threshold: on the decoder's logits (big_vision: 0).

    Returns:
        A list of dicts, one per well-formed object: `"box"` (normalised
        `[y1, x1, y2, x2]`), `"box_pixels"` (int `(y1, x1, y2, x2)`), `"label"`,
        `"codes"`, `"mask_logits"` float32 `(64, 64)` and `"mask"` bool
        `(height, width)`; the last two are None when the object has no
        well-formed `<seg>` tokens or no decoder is given. All masks are
        decoded in one batch. Never raises on malformed output.
    """
    objects = parse_segmentation_tokens(output)
    with_codes = [o for o in objects if o["codes"] is not None] if decoder is not None else []
    logits = decoder.decode(np.stack([o["codes"] for o in with_codes])) if with_codes else []
    for obj in objects:
        obj["box_pixels"] = box_to_pixels(obj["box"], height, width)
        obj["mask_logits"] = obj["mask"] = None
    for obj, mask64 in zip(with_codes, logits):
        obj["mask_logits"] = mask64
        obj["mask"] = paste_mask(mask64, obj["box"], height, width, threshold)
    return objects
