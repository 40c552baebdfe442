"""PaliGemma references shared by tests (not a test module): tiny random HF
PaliGemma models and their inputs, and greedy decoding without a cache.

torch and transformers are imported where used: the callers skip without them.
"""

import keras
import numpy as np
from keras import ops

from keras_siglip.models.cappa.cappa_generation import compile_stateless
from tests.helpers import numpy

VOCAB = 300
IMAGE_TOKEN = VOCAB - 1
IMAGE_SIZE, PATCH = 16, 4
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
TEXT_LENGTH = 10

VISION = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
# head_dim 16 != hidden 48 / 4 heads, so no (N*H, D) reshape lines up by accident.
GEMMA_1 = dict(model_type="gemma", vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=1, head_dim=16)
GEMMA_2 = dict(GEMMA_1, model_type="gemma2", num_key_value_heads=2, sliding_window=4, attn_logit_softcapping=3.0,
               final_logit_softcapping=5.0, query_pre_attn_scalar=12)
BOS, EOS, PAD = 2, 1, 0
TEXTS = [
    "caption en", "a red circle on a blue square", "detect cat ; dog", "answer en what colour is it",
    "two green triangles", "segment the cat", "a small dog next to a big cat",
] * 8


def build_hf_pali_gemma(text, seed):
    """A random, fully perturbed HF PaliGemma (eager attention, float32, eval)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.PaliGemmaConfig(
        vision_config=VISION, text_config=dict(text, pad_token_id=0, bos_token_id=2, eos_token_id=1),
        projection_dim=text["hidden_size"], image_token_index=IMAGE_TOKEN, vocab_size=VOCAB,
    )
    config._attn_implementation = "eager"
    model = transformers.PaliGemmaForConditionalGeneration(config).float().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def make_inputs(seed, prefix_lengths=(4, 6), suffix_lengths=(4, 2)):
    """Images in [-1, 1] and `[prefix | suffix | pad]` texts with their masks."""
    rng = np.random.default_rng(seed)
    batch = len(prefix_lengths)
    token_ids = rng.integers(3, IMAGE_TOKEN, (batch, TEXT_LENGTH)).astype("int32")
    padding_mask = np.zeros((batch, TEXT_LENGTH), "int32")
    response_mask = np.zeros((batch, TEXT_LENGTH), "int32")
    for row, (prefix, suffix) in enumerate(zip(prefix_lengths, suffix_lengths)):
        padding_mask[row, : prefix + suffix] = 1
        response_mask[row, prefix:] = 1
        token_ids[row, prefix + suffix:] = 0
    images = rng.uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    return dict(images=images, token_ids=token_ids, padding_mask=padding_mask, response_mask=response_mask)


def hf_text_logits(model, inputs):
    """HF logits of the text positions: image placeholders + text, token_type_ids
    0 on image + prefix and 1 on suffix and padding (HF's processor layout)."""
    import torch

    batch = len(inputs["token_ids"])
    image = np.ones((batch, NUM_IMAGE_TOKENS), "int64")
    ids = np.concatenate([IMAGE_TOKEN * image, inputs["token_ids"]], axis=1)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch.from_numpy(inputs["images"].transpose(0, 3, 1, 2).copy()),
            attention_mask=torch.from_numpy(np.concatenate([image, inputs["padding_mask"]], axis=1)),
            token_type_ids=torch.from_numpy(np.concatenate([0 * image, inputs["response_mask"]], axis=1)),
        )
    return out.logits.numpy()[:, NUM_IMAGE_TOKENS:]


def keras_logits(backbone, inputs):
    return keras.ops.convert_to_numpy(backbone(inputs))


def max_real_difference(a, b, inputs):
    return float(np.max(np.abs(a - b)[inputs["padding_mask"].astype(bool)]))


def saved_hf_pali_gemma(tmp_path_factory, name, text, seed):
    model = build_hf_pali_gemma(text, seed)
    folder = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def random_images(batch, seed, size=IMAGE_SIZE):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype("float32")


def random_prompts(lengths, seed, avoid=(), vocab=IMAGE_TOKEN):
    """`(B, max(lengths))` right-padded prompt ids `[BOS, ...]` and their mask."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), "int32")
    mask = np.zeros_like(ids)
    allowed = np.array([t for t in range(3, vocab) if t not in avoid])
    for row, n in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1:n] = rng.choice(allowed, n - 1)
        mask[row, :n] = 1
    return ids, mask


def uncached_greedy(backbone, images, prompt, mask, steps):
    """Greedy decoding without a cache: the whole forward recomputed each step.

    Rows keep their tokens right-padded in one fixed `(B, T + steps)` shape
    (padding is masked out as keys): one compiled forward serves every step.
    `images`: an image batch, or a dict of NaFlex patch inputs."""
    images = images if isinstance(images, dict) else {"images": images}
    forward = compile_stateless(backbone, backbone)
    lengths = mask.sum(axis=1)
    width = prompt.shape[1] + steps
    ids = np.zeros((len(prompt), width), "int32")
    ids[:, : prompt.shape[1]] = prompt * mask
    positions = np.arange(width)[None, :]
    done = np.zeros(len(prompt), bool)
    out = np.zeros((len(prompt), steps), "int32")
    for step in range(steps):
        n = lengths + step
        inputs = dict(images, token_ids=ids, padding_mask=(positions < n[:, None]).astype("int32"),
                      response_mask=(positions >= lengths[:, None]).astype("int32"))
        logits = numpy(forward({k: ops.convert_to_tensor(v) for k, v in inputs.items()}))
        token = np.where(done, PAD, logits[np.arange(len(prompt)), n - 1].argmax(-1))
        ids[np.arange(len(prompt)), n] = token
        out[:, step] = token
        done |= token == EOS
    return out
