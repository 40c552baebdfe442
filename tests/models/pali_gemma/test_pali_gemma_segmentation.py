"""PaliGemma's VQ-VAE mask decoder and segmentation parsing.

The reference is a PyTorch module written here from the architecture of
big_vision's `reconstruct_masks` / Ning et al.'s VQ-VAE, with the parameter
names of `vae-oid.npz` (`_vq_vae._embedding`, `decoder.{0,2.net.*,3.net.*,4,6,
8,10,12}`): random weights are saved in that layout (plus encoder entries the
decoder ignores), loaded with `PaliGemmaMaskDecoder.from_npz`, and both decode
the same codes. Measured max abs difference (float32, CPU, logits ~0.1-1):
jax below 1e-6 (8e-7 with the released width 512), tensorflow and torch 0
(ATOL 1e-5).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_siglip.convert.common import CheckpointMismatch  # noqa: E402
from keras_siglip.models.pali_gemma.pali_gemma_segmentation import (  # noqa: E402
    PALIGEMMA_LOC_OFFSET, PALIGEMMA_SEG_OFFSET, PaliGemmaMaskDecoder, box_to_pixels, load_mask_decoder,
    parse_segmentation, parse_segmentation_tokens, paste_mask,
)

ATOL = 1e-5
EMBEDDING_DIM = 24  # the released file has 512; any width works


class TorchResBlock(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x):
        return x + self.net(x)


class TorchMaskDecoder(torch.nn.Module):
    """The reference: codebook -> 4x4 grid (NCHW) -> the `decoder` Sequential."""

    def __init__(self, embedding_dim, num_codes=128):
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.randn(num_codes, embedding_dim))
        layers = [torch.nn.Conv2d(embedding_dim, 128, 1), torch.nn.ReLU(), TorchResBlock(128), TorchResBlock(128)]
        channels = 128
        for width in (128, 64, 32, 16):
            layers += [torch.nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), torch.nn.ReLU()]
            channels = width
        layers.append(torch.nn.Conv2d(channels, 1, 1))
        self.decoder = torch.nn.Sequential(*layers)

    def forward(self, codes):
        x = self.codebook[codes].reshape(codes.shape[0], 4, 4, -1).permute(0, 3, 1, 2)
        return self.decoder(x)[:, 0]

    def published_weights(self):
        weights = {name: p.detach().numpy().copy() for name, p in self.decoder.state_dict().items()}
        weights = {f"decoder.{name}": value for name, value in weights.items()}
        weights["_vq_vae._embedding"] = self.codebook.detach().numpy().copy()
        # The published file also holds the encoder, unused for decoding.
        weights["encoder.0.weight"] = np.zeros((128, 1, 4, 4), np.float32)
        weights["encoder.0.bias"] = np.zeros((128,), np.float32)
        return weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = TorchMaskDecoder(EMBEDDING_DIM).eval()
    with torch.no_grad():
        for param in model.parameters():  # no zero bias; outputs of order 1
            param.add_(0.05 * torch.randn(param.shape))
    path = tmp_path_factory.mktemp("vae") / "vae-oid.npz"
    np.savez(path, **model.published_weights())
    return model, str(path)


@pytest.fixture(scope="module")
def decoder(reference):
    return load_mask_decoder(reference[1])


def reference_logits(model, codes):
    with torch.no_grad():
        return model(torch.from_numpy(codes.astype(np.int64))).numpy()


def test_decoder_matches_reference(reference, decoder):
    model, _ = reference
    codes = np.random.default_rng(0).integers(0, 128, (3, 16)).astype(np.int32)
    expected = reference_logits(model, codes)
    actual = decoder.decode(codes)
    assert actual.shape == expected.shape == (3, 64, 64)
    assert np.abs(expected).max() > 0.05  # not a degenerate output
    np.testing.assert_allclose(actual, expected, atol=ATOL)


def test_loaded_shape_and_config_round_trip(decoder):
    assert decoder.embedding_dim == EMBEDDING_DIM and decoder.num_codes == 128
    clone = PaliGemmaMaskDecoder.from_config(decoder.get_config())
    clone.build()
    clone.set_weights(decoder.get_weights())
    codes = np.arange(16, dtype=np.int32)[None]
    np.testing.assert_allclose(clone.decode(codes), decoder.decode(codes), atol=1e-6)
    assert decoder.decode(np.zeros((0, 16), np.int32)).shape == (0, 64, 64)


def test_missing_and_misshaped_keys_are_named(tmp_path, reference):
    weights = reference[0].published_weights()
    weights.pop("decoder.6.weight")
    weights["decoder.12.bias"] = np.zeros((2,), np.float32)
    weights["decoder.14.weight"] = np.zeros((1,), np.float32)
    path = tmp_path / "broken.npz"
    np.savez(path, **weights)
    with pytest.raises(CheckpointMismatch) as error:
        load_mask_decoder(path)
    message = str(error.value)
    assert "missing (1): decoder.6.weight" in message
    assert "decoder.12.bias: file (2,) vs model (1,)" in message
    assert "unexpected (1): decoder.14.weight" in message
    np.savez(tmp_path / "other.npz", **{"params/img/x": np.zeros(2)})
    with pytest.raises(CheckpointMismatch, match="_vq_vae._embedding"):
        load_mask_decoder(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        load_mask_decoder(tmp_path / "absent.npz")


def _text(objects):
    parts = []
    for box, codes, label in objects:
        locs = "".join(f"<loc{d:04d}>" for d in box)
        segs = "".join(f"<seg{c:03d}>" for c in codes)
        parts.append(f"{locs}{segs} {label}")
    return " ; ".join(parts)


def test_parse_round_trip_text_and_ids():
    rng = np.random.default_rng(1)
    boxes = [(100, 200, 900, 800), (0, 0, 1023, 1023)]
    codes = [rng.integers(0, 128, 16), rng.integers(0, 128, 16)]
    text = _text([(boxes[0], codes[0], "a cat"), (boxes[1], codes[1], "dog")])
    objects = parse_segmentation_tokens(text)
    assert [o["label"] for o in objects] == ["a cat", "dog"]
    for obj, box, code in zip(objects, boxes, codes):
        np.testing.assert_allclose(obj["box"], np.array(box) / 1023, atol=1e-7)
        np.testing.assert_array_equal(obj["codes"], code)
    ids = [PALIGEMMA_LOC_OFFSET + d for d in boxes[0]] + [PALIGEMMA_SEG_OFFSET + c for c in codes[0]]
    ids += [5, 6, 7]  # the label's ids (not <loc>/<seg>): no label without the tokenizer
    (obj,) = parse_segmentation_tokens(np.array(ids))
    np.testing.assert_array_equal(obj["codes"], codes[0])
    assert obj["label"] == ""
    assert parse_segmentation_tokens(text.encode())[1]["label"] == "dog"


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("no objects here", []),
    ("<loc0100><loc0100><loc0200>", []),  # three locs
    ("<loc0500><loc0100><loc0200><loc0900> upside down", []),  # y2 < y1
    ("<loc0100><loc0100><loc0100><loc0900> flat", []),  # y2 == y1
    ("<loc0100><loc0100><loc1024><loc0900> out of range", []),
    ("<loc100><loc0100><loc0200><loc0900> three digits", []),
    ("junk <loc0100><loc0100><loc0200><loc0900> prefixed", []),
    ("<loc0100><loc0100><loc0200><loc0900><loc0300> five locs", []),
    ("<loc0100><loc0100><loc0200><loc0900><seg001> short", [("short", False)]),
    ("<loc0100><loc0100><loc0200><loc0900>" + "<seg128>" * 16 + " bad code", [("bad code", False)]),
    ("<loc0100><loc0100><loc0200><loc0900>" + "<seg001>" * 17 + " long", [("long", False)]),
    ("<loc0100><loc0100><loc0200><loc0900> box only ; ; <loc0>", [("box only", False)]),
    ("<loc0100><loc0100><loc0200><loc0900>" + "<seg005>" * 16 + " ok ; garbage", [("ok", True)]),
])
def test_malformed_output_gives_fewer_objects_never_raises(text, expected, decoder):
    objects = parse_segmentation(text, decoder, 30, 40)
    assert [(o["label"], o["mask"] is not None) for o in objects] == expected
    for obj in objects:
        assert (obj["mask"] is None) == (obj["codes"] is None) == (obj["mask_logits"] is None)


def test_parse_never_raises_on_odd_inputs(decoder):
    for output in (None, 3.5, [[1, 2], [3]], b"\xff\xfe", np.zeros((0,), np.int32), [-5, 10**12]):
        assert parse_segmentation(output, decoder, 8, 8) == []


def test_masks_are_pasted_into_the_box(reference, decoder):
    model, _ = reference
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 128, 16)
    box = (256, 128, 768, 1023)  # y1, x1, y2, x2 bins
    height, width = 90, 120
    (obj,) = parse_segmentation(_text([(box, codes, "thing")]), decoder, height, width)
    y1, x1, y2, x2 = obj["box_pixels"]
    assert (y1, x1, y2, x2) == (int(256 / 1023 * 90), int(128 / 1023 * 120), int(768 / 1023 * 90), 120)
    assert obj["mask"].shape == (height, width) and obj["mask"].dtype == bool
    outside = np.ones((height, width), bool)
    outside[y1:y2, x1:x2] = False
    assert not obj["mask"][outside].any()
    # Inside the box: the reference logits, bilinearly resized, thresholded at 0.
    from PIL import Image

    logits = reference_logits(model, codes[None].astype(np.int32))[0]
    resized = np.asarray(Image.fromarray(logits).resize((x2 - x1, y2 - y1), Image.BILINEAR))
    np.testing.assert_array_equal(obj["mask"][y1:y2, x1:x2], resized > 0)
    np.testing.assert_allclose(obj["mask_logits"], logits, atol=ATOL)


def test_paste_mask_geometry():
    inside = np.ones((64, 64), np.float32)
    mask = paste_mask(inside, np.array([0.5, 0.25, 1.0, 0.75]), 10, 8)
    expected = np.zeros((10, 8), bool)
    expected[5:10, 2:6] = True
    np.testing.assert_array_equal(mask, expected)
    assert not paste_mask(inside, np.array([0.5, 0.5, 0.52, 0.9]), 10, 8).any()  # empty in pixels
    assert not paste_mask(-inside, np.array([0.0, 0.0, 1.0, 1.0]), 10, 8).any()
    assert box_to_pixels([0.1, 0.2, 0.9, 1.0], 100, 50) == (10, 10, 90, 50)


def test_boxes_only_without_decoder():
    text = _text([((10, 20, 30, 40), np.zeros(16, int), "x")])
    (obj,) = parse_segmentation(text, None, 5, 5)
    assert obj["mask"] is None and obj["codes"] is not None
