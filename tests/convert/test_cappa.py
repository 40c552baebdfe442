"""A big_vision CapPa tree loads into CapPaBackbone and matches a numpy forward of that tree."""

import math

import numpy as np
import pytest
from keras import ops

from keras_siglip.convert.cappa import load_cappa, read_cappa
from keras_siglip.convert.common import CheckpointMismatch

P, C, SIDE, W, DEPTH, HEADS, MLP = 4, 3, 8, 16, 2, 2, 32  # encoder
E, D_DEPTH, D_HEADS, D_MLP, V, L = 12, 2, 3, 24, 20, 6  # decoder


def random_tree(rng, decoder_bias, masked_pred):
    """A big_vision CapPa param tree (per-block names) with every leaf random."""
    def normal(*shape, scale=0.3):
        return (scale * rng.normal(size=shape)).astype("float32")

    def norm(prefix, width, bias=True):
        out = {f"{prefix}/scale": 1 + normal(width, scale=0.1)}
        if bias:
            out[f"{prefix}/bias"] = normal(width, scale=0.1)
        return out

    tree = {
        "encoder/embedding/kernel": normal(P, P, C, W),
        "encoder/embedding/bias": normal(W),
        "encoder/pos_embedding": normal(1, (SIDE // P) ** 2, W),
        **norm("encoder/Transformer/encoder_norm", W),
        "pos_embedding_decoder": normal(1, L, E),
        "decoder/EmbedTargets/embedding": normal(V + masked_pred, E, scale=1.0),
        **norm("decoder/LayerNorm", E),
        "decoder/LogitsDense/kernel": normal(E, V),  # zero-initialised in training; random here
        "decoder/LogitsDense/bias": normal(V),
    }
    for i in range(DEPTH):
        block = f"encoder/Transformer/encoderblock_{i}"
        attention = f"{block}/MultiHeadDotProductAttention_0"
        tree.update(norm(f"{block}/LayerNorm_0", W))
        tree.update(norm(f"{block}/LayerNorm_1", W))
        for name in ("query", "key", "value"):
            tree[f"{attention}/{name}/kernel"] = normal(W, HEADS, W // HEADS)
            tree[f"{attention}/{name}/bias"] = normal(HEADS, W // HEADS)
        tree[f"{attention}/out/kernel"] = normal(HEADS, W // HEADS, W)
        tree[f"{attention}/out/bias"] = normal(W)
        tree.update({f"{block}/MlpBlock_0/Dense_0/kernel": normal(W, MLP), f"{block}/MlpBlock_0/Dense_0/bias": normal(MLP),
                     f"{block}/MlpBlock_0/Dense_1/kernel": normal(MLP, W), f"{block}/MlpBlock_0/Dense_1/bias": normal(W)})
    for i in range(D_DEPTH):
        block = f"decoder/EncDecBlock{i}"
        for j in (1, 2, 3):
            tree.update(norm(f"{block}/LayerNorm{j}", E, decoder_bias))
        for attention, source in (("SelfAttn", E), ("CrossAttn", W)):
            tree[f"{block}/{attention}/query/kernel"] = normal(E, D_HEADS, E // D_HEADS)
            for name in ("key", "value"):
                tree[f"{block}/{attention}/{name}/kernel"] = normal(source, D_HEADS, E // D_HEADS)
            tree[f"{block}/{attention}/out/kernel"] = normal(D_HEADS, E // D_HEADS, E)
        tree[f"{block}/MLP/Dense_0/kernel"] = normal(E, D_MLP)
        tree[f"{block}/MLP/Dense_1/kernel"] = normal(D_MLP, E)
        if decoder_bias:
            tree[f"{block}/MLP/Dense_0/bias"] = normal(D_MLP)
            tree[f"{block}/MLP/Dense_1/bias"] = normal(E)
    return tree


def scanned(tree):
    """big_vision's `scan=True` layout: encoder blocks stacked on axis 0, decoder blocks on axis 1."""
    out = {}
    for key, value in tree.items():
        for prefix, stacked, axis in (("encoder/Transformer/encoderblock_", "encoder/Transformer/encoderblock", 0),
                                      ("decoder/EncDecBlock", "decoder/EncDecBlock", 1)):
            if key.startswith(prefix) and key[len(prefix)].isdigit():
                index, leaf = key[len(prefix):].split("/", 1)
                out.setdefault(f"{stacked}/{leaf}", {})[int(index)] = (value, axis)
                break
        else:
            out[key] = value
    for key, value in list(out.items()):
        if isinstance(value, dict):
            axis = value[0][1]
            out[key] = np.stack([value[i][0] for i in range(len(value))], axis=axis)
    return out


# -- an independent float64 forward of the tree (big_vision's math) ------------------


def layer_norm(x, tree, prefix):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-6) * tree[f"{prefix}/scale"]
    return y + tree.get(f"{prefix}/bias", 0.0)


def attention(x, source, tree, prefix, mask=None):
    q, k, v = (np.einsum("bld,dhk->blhk", inp, tree[f"{prefix}/{n}/kernel"]) + tree.get(f"{prefix}/{n}/bias", 0.0)
               for inp, n in ((x, "query"), (source, "key"), (source, "value")))
    scores = np.einsum("blhk,bmhk->bhlm", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -1e30)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhlm,bmhk->blhk", weights, v)
    return np.einsum("blhk,hkd->bld", out, tree[f"{prefix}/out/kernel"]) + tree.get(f"{prefix}/out/bias", 0.0)


def mlp(x, tree, prefix):
    h = x @ tree[f"{prefix}/Dense_0/kernel"] + tree.get(f"{prefix}/Dense_0/bias", 0.0)
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return h @ tree[f"{prefix}/Dense_1/kernel"] + tree.get(f"{prefix}/Dense_1/bias", 0.0)


def reference_logits(tree, images, tokens):
    tree = {k: v.astype("float64") for k, v in tree.items()}
    b, grid = len(images), SIDE // P
    patches = images.astype("float64").reshape(b, grid, P, grid, P, C)
    x = np.einsum("bypxqc,pqcd->byxd", patches, tree["encoder/embedding/kernel"]).reshape(b, grid * grid, W)
    x = x + tree["encoder/embedding/bias"] + tree["encoder/pos_embedding"]
    for i in range(DEPTH):
        block = f"encoder/Transformer/encoderblock_{i}"
        y = layer_norm(x, tree, f"{block}/LayerNorm_0")
        x = x + attention(y, y, tree, f"{block}/MultiHeadDotProductAttention_0")
        x = x + mlp(layer_norm(x, tree, f"{block}/LayerNorm_1"), tree, f"{block}/MlpBlock_0")
    encoded = layer_norm(x, tree, "encoder/Transformer/encoder_norm")
    inputs = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # shift right with pad 0
    y = tree["decoder/EmbedTargets/embedding"][inputs] + tree["pos_embedding_decoder"][:, : tokens.shape[1]]
    causal = np.tril(np.ones((tokens.shape[1],) * 2, bool))[None, None]
    for i in range(D_DEPTH):
        block = f"decoder/EncDecBlock{i}"
        h = layer_norm(y, tree, f"{block}/LayerNorm1")
        y = y + attention(h, h, tree, f"{block}/SelfAttn", causal)
        y = y + attention(layer_norm(y, tree, f"{block}/LayerNorm2"), encoded, tree, f"{block}/CrossAttn")
        y = y + mlp(layer_norm(y, tree, f"{block}/LayerNorm3"), tree, f"{block}/MLP")
    y = layer_norm(y, tree, "decoder/LayerNorm")
    return y @ tree["decoder/LogitsDense/kernel"] + tree["decoder/LogitsDense/bias"]


@pytest.mark.parametrize("layout", ["per_block", "scanned"])
@pytest.mark.parametrize("decoder_bias", [False, True])
def test_loads_and_matches_the_tree(tmp_path, layout, decoder_bias):
    rng = np.random.default_rng(int(decoder_bias))
    tree = random_tree(rng, decoder_bias, masked_pred=True)
    stored = scanned(tree) if layout == "scanned" else tree
    path = tmp_path / "cappa.npz"
    np.savez(path, **{f"params/{k}": v for k, v in stored.items()})
    checkpoint = read_cappa(path)
    assert checkpoint.config == dict(
        vocabulary_size=V, patch_size=P, width=W, image_size=SIDE, num_channels=C, max_length=L, depth=DEPTH,
        num_heads=HEADS, mlp_dim=MLP, decoder_width=E, decoder_depth=D_DEPTH, decoder_num_heads=D_HEADS,
        decoder_mlp_dim=D_MLP, masked_pred=True, decoder_bias=decoder_bias,
    )
    model = load_cappa(path, progress=False)
    images = rng.uniform(-1, 1, (3, SIDE, SIDE, C)).astype("float32")
    tokens = rng.integers(1, V, (3, L)).astype("int32")
    got = ops.convert_to_numpy(model({"images": images, "token_ids": tokens}))
    expected = reference_logits(tree, images, tokens)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mismatches_are_listed(tmp_path):
    tree = random_tree(np.random.default_rng(0), decoder_bias=False, masked_pred=True)
    del tree["decoder/EncDecBlock1/CrossAttn/value/kernel"]
    tree["decoder/EncDecBlock0/LayerNorm2/bias"] = np.zeros(E, "float32")  # a bias the model lacks
    path = tmp_path / "broken.npz"
    np.savez(path, **tree)
    with pytest.raises(CheckpointMismatch) as error:
        load_cappa(path, progress=False)
    message = str(error.value)
    assert "missing (1): decoder/block_1/cross_attention/value/kernel" in message
    assert "unexpected (1): decoder/block_0/layer_norm_2/beta" in message


def test_a_siglip_checkpoint_is_not_a_cappa_one(tmp_path):
    path = tmp_path / "siglip.npz"
    np.savez(path, **{"params/img/embedding/kernel": np.zeros((4, 4, 3, 8), "float32"),
                      "params/txt/Embed_0/embedding": np.zeros((10, 8), "float32")})
    with pytest.raises(ValueError, match="not a big_vision CapPa checkpoint"):
        read_cappa(path)


def test_convert_routes_a_cappa_checkpoint_to_a_cappa_preset(tmp_path):
    from keras_siglip import convert
    from keras_siglip.models import CapPaBackbone

    rng = np.random.default_rng(3)
    tree = random_tree(rng, decoder_bias=True, masked_pred=True)
    path = tmp_path / "cappa.npz"
    np.savez(path, **{f"params/{k}": v for k, v in scanned(tree).items()})
    assert convert.detect_model(path) == "cappa"
    convert.convert(path, tmp_path / "preset", progress=False)
    model = CapPaBackbone.from_preset(str(tmp_path / "preset"))
    images = rng.uniform(-1, 1, (2, SIDE, SIDE, C)).astype("float32")
    tokens = rng.integers(1, V, (2, L)).astype("int32")
    got = ops.convert_to_numpy(model({"images": images, "token_ids": tokens}))
    np.testing.assert_allclose(got, reference_logits(tree, images, tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokenizer"):
        convert.convert(path, tmp_path / "other", tokenizer=str(path), progress=False)
