"""The tiny random HF SigLIP / SigLIP 2 NaFlex models and inputs of
test_huggingface, and the comparison of their outputs with ours; shared with
test_hub (not a test module)."""

import numpy as np
import torch

from tests.helpers import naflex_batch
from tests.hf_reference import build_hf_siglip

ATOL = 1e-5
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=4)
TEXT = dict(vocab_size=60, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=6, projection_size=32)
GRIDS = [(4, 4), (3, 5), (2, 7), (1, 9)]
PATCHES = 20


def hf_model(naflex, seed=0):
    """A tiny random HF `SiglipModel` (16 px, 4x4 patches) or NaFlex `Siglip2Model`."""
    vision = dict(VISION, num_patches=16) if naflex else dict(VISION, image_size=16)
    return build_hf_siglip(vision, TEXT, seed=seed, naflex=naflex)


def make_inputs(naflex, vocab=60, length=6, patch_dim=48, seed=1):
    """Images (B, 16, 16, 3) or NaFlex patches of `GRIDS`, and token ids (B, L) ending in EOS."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(2, vocab, (len(GRIDS), length)).astype("int32")
    token_ids[:, -1] = 1
    if naflex:
        return naflex_batch(GRIDS, PATCHES, patch_dim, seed=seed), token_ids
    return {"images": rng.uniform(-1, 1, (len(GRIDS), 16, 16, 3)).astype("float32")}, token_ids


def hf_outputs(model, x, token_ids):
    kwargs = {"input_ids": torch.from_numpy(token_ids).long()}
    if "images" in x:
        kwargs["pixel_values"] = torch.from_numpy(x["images"]).permute(0, 3, 1, 2)
    else:
        kwargs.update(
            pixel_values=torch.from_numpy(x["patches"]),
            pixel_attention_mask=torch.from_numpy(x["patch_mask"]),
            spatial_shapes=torch.tensor(GRIDS),
        )
    with torch.no_grad():
        out = model(**kwargs)
    return {"image_embeddings": out.image_embeds, "text_embeddings": out.text_embeds,
            "logits": out.logits_per_image}


def assert_outputs_match(backbone, model, naflex, **input_kwargs):
    x, token_ids = make_inputs(naflex, **input_kwargs)
    ours = backbone.predict({**x, "token_ids": token_ids}, verbose=0)
    theirs = hf_outputs(model, x, token_ids)
    for key, value in theirs.items():
        value = value.float().numpy()
        print(f"max |ours - HF| {key}: {np.max(np.abs(ours[key] - value)):.2e}")
        np.testing.assert_allclose(ours[key], value, atol=ATOL, err_msg=key)
