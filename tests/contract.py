"""The model contract: one set of checks that every backbone and task class of
`keras_siglip.models` runs (in the spirit of keras-hub's `run_backbone_test` /
`run_task_test`; our own code). Not a test module: `tests/models/test_contract.py`
runs it, one test per class, and says which checks apply to which class.

Each case builds its tiny model once (compiling dominates the JAX pass), sets
every weight from numpy (so the model is the same on every backend) and runs:

    golden        compiled `predict` of a fixed input against numbers stored in
                  `tests/fixtures/contract_golden.json` (atol 1e-5, every backend)
    config        `get_config` / `from_config` + `set_weights`: same outputs
    keras_file    `.keras` save / `load_model(safe_mode=True)`: same outputs
    preset        `save_to_preset` / `from_preset`: same outputs
    batch         row i of a batch of 3 equals example i alone (1e-5)
    shapes        other input shapes (text length, NaFlex patch count, image size)
    mixed         `mixed_bfloat16`: finite, close to float32 (`MIXED_RTOL`)
    int8          `quantize("int8")`: int8 kernels, min row cosine > `INT8_FLOOR`
    saved_model   TensorFlow SavedModel export, reloaded: same outputs (1e-5)
    retrace       two same-shape `predict` calls trace the predict step once
    train         one `fit` step (SGD) changes every trainable weight that gets
                  a gradient and no frozen or non-trainable one

Regenerate the golden numbers (after an intended change of a model's numerics)
under JAX and check the diff:

    KERAS_BACKEND=jax python -m tests.contract --regenerate [case ...]
"""

import dataclasses
import json
import os
import pathlib
import re
import sys
import zlib
from typing import Callable, Optional

import numpy as np

from tests.helpers import naflex_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_PATH = ROOT / "tests" / "fixtures" / "contract_golden.json"

CHECKS = ("golden", "config", "keras_file", "preset", "batch", "shapes", "mixed", "int8", "saved_model",
          "retrace", "train")

GOLDEN_ATOL = 1e-5  # float32, the same weights and inputs on every backend
SAME_ATOL = 0.0  # round trips: the same weights through the same ops give the same bits
BATCH_ATOL = 1e-5  # one example alone vs in a batch (other matmul shapes)
# mixed_bfloat16 vs float32 on the same weights: relative L2 error of each output
# (bfloat16 keeps 8 significant bits, about 0.4% per rounding). Measured worst over
# the cases: 0.023 jax, 0.018 tensorflow, 0.017 torch (ThreeTowersBackbone's
# text_alignment_logits); a zeroed or detached tower gives NaN or > 0.08.
MIXED_RTOL = 0.05
# int8 vs float32: minimum cosine over output rows, the floor of
# tests/models/test_quantize_families.py. Measured minimum over the cases 0.99925
# (CapPaBackbone's logits; the same on every backend: the weights are numpy's).
INT8_FLOOR = 0.999
STD = 0.2  # scale of the numpy weights
BATCH = 3

# === Deterministic weights ===


def set_numpy_weights(model):
    """Every float weight from numpy: `N(base, STD)` from a generator seeded by
    the variable's path (and trainable flag: a frozen copy of a tower has the
    same paths), base 1 for LayerNorm scales (`gamma`), else 0, so no scale is
    1 and no bias 0. The model is then the same on every backend, whatever
    order the backend lists the weights in."""
    seen = {}
    variables = {id(v): v for v in model.weights}
    # A task's backbone may hold weights its functional graph does not list
    # (the zero-shot classifier's text tower on torch): set those too.
    variables.update({id(v): v for v in getattr(getattr(model, "backbone", None), "weights", [])})
    for variable in variables.values():
        if "float" not in str(variable.dtype):
            continue  # seed generator states, integer kernels
        key = f"{variable.path}|{'trainable' if variable.trainable else 'frozen'}"
        seen[key] = seen.get(key, -1) + 1
        rng = np.random.default_rng(zlib.crc32(f"{key}|{seen[key]}".encode()))
        base = 1.0 if variable.path.endswith("gamma") else 0.0
        variable.assign((base + rng.normal(0.0, STD, tuple(variable.shape))).astype("float32"))


# === Outputs ===


def to_numpy(x):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x))


def flatten_outputs(outputs):
    """A model's outputs as `{name: float64 numpy}`."""
    if isinstance(outputs, dict):
        return {k: to_numpy(v).astype("float64") for k, v in sorted(outputs.items())}
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": to_numpy(v).astype("float64") for i, v in enumerate(outputs)}
    return {"output": to_numpy(outputs).astype("float64")}


def eager(model, x):
    """Outputs of a direct (uncompiled) call in inference mode."""
    return flatten_outputs(model(x, training=False))


def predicted(model, x):
    return flatten_outputs(model.predict(x, batch_size=len(first(x)), verbose=0))


def first(x):
    return next(iter(x.values())) if isinstance(x, dict) else x


def rows(x, start, stop):
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def summary(outputs):
    """Golden statistics of each output: shape, mean, std and eight values at
    evenly spaced flat positions."""
    result = {}
    for name, value in outputs.items():
        flat = value.reshape(-1)
        picks = np.linspace(0, flat.size - 1, 8).astype(int) if flat.size else []
        result[name] = {
            "shape": list(value.shape),
            "mean": float(flat.mean()),
            "std": float(flat.std()),
            "values": [float(flat[i]) for i in picks],
        }
    return result


def assert_close(ours, theirs, atol, what):
    assert set(ours) == set(theirs), f"{what}: outputs {sorted(ours)} vs {sorted(theirs)}"
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, f"{what}: {name} shape {ours[name].shape} vs {theirs[name].shape}"
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=atol, err_msg=f"{what}: {name}")


def model_summary(model):
    """What the golden numbers record of the model itself."""
    return {"weights": len(model.weights), "parameters": int(sum(np.prod(v.shape) for v in model.weights))}


def assert_golden(outputs, golden):
    got = summary(outputs)
    assert set(got) == set(golden), f"outputs {sorted(got)} vs golden {sorted(golden)}"
    for name, want in golden.items():
        have = got[name]
        assert have["shape"] == want["shape"], f"{name}: shape {have['shape']} vs golden {want['shape']}"
        for key in ("mean", "std", "values"):
            np.testing.assert_allclose(have[key], want[key], rtol=0, atol=GOLDEN_ATOL,
                                       err_msg=f"{name} {key} vs golden")


def min_row_cosine(a, b):
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=-1)))


def load_golden():
    if not GOLDEN_PATH.exists():
        return {}
    return json.loads(GOLDEN_PATH.read_text())


# === Inputs ===


def uniform_images(rng, batch, size):
    h, w = (size, size) if isinstance(size, int) else size
    return rng.uniform(-1, 1, (batch, h, w, 3)).astype("float32")


def token_ids(rng, batch, length, vocab, low=2):
    return rng.integers(low, vocab, (batch, length)).astype("int32")


def pad_patches(x, extra, rng):
    """NaFlex inputs with `extra` more padding slots holding random patches
    (masked out: the outputs must not change)."""
    out = dict(x)
    batch = len(x["patches"])
    out["patches"] = np.concatenate(
        [x["patches"], rng.uniform(-1, 1, (batch, extra, x["patches"].shape[-1])).astype("float32")], 1)
    out["patch_coords"] = np.concatenate([x["patch_coords"], np.zeros((batch, extra, 2), "int32")], 1)
    out["patch_mask"] = np.concatenate([x["patch_mask"], np.zeros((batch, extra), "int32")], 1)
    for key in x:
        if key not in ("patches", "patch_coords", "patch_mask"):
            out[key] = x[key]
    return out


# === Shape checks (each: model, x, reference eager outputs) ===


def check_other_image_size(size, keys=None):
    """A resolution-flexible model at another image size: right shapes, finite."""

    def check(model, x, reference):
        other = dict(x) if isinstance(x, dict) else x
        images = uniform_images(np.random.default_rng(7), BATCH, size)
        if isinstance(other, dict):
            other["images"] = images
        else:
            other = images
        outputs = eager(model, other)
        for name, value in outputs.items():
            assert value.shape == reference[name].shape, f"{name} at {size}: {value.shape} vs {reference[name].shape}"
            assert np.isfinite(value).all(), f"{name} at {size}"

    check.__doc__ = f"images at {size}"
    return check


def check_shorter_text(length, key="token_ids", masks=()):
    """A causal decoder on a shorter text: the logits of the kept positions do
    not change (nothing attends to later positions)."""

    def check(model, x, reference):
        short = {k: (v[:, :length] if k in (key, *masks) else v) for k, v in x.items()}
        outputs = eager(model, short)
        for name, value in outputs.items():  # per-position outputs: their first positions; others whole
            want = reference[name] if value.shape == reference[name].shape else reference[name][:, :length]
            np.testing.assert_allclose(value, want, rtol=0, atol=BATCH_ATOL,
                                       err_msg=f"{name}: text length {length}")

    check.__doc__ = f"text length {length}"
    return check


def check_more_padding(extra):
    """NaFlex inputs with more (masked) padding slots: the same outputs."""

    def check(model, x, reference):
        outputs = eager(model, pad_patches(x, extra, np.random.default_rng(11)))
        for name, value in outputs.items():
            if value.shape == reference[name].shape:
                np.testing.assert_allclose(value, reference[name], rtol=0, atol=BATCH_ATOL,
                                           err_msg=f"{name} with {extra} more padding slots")
            else:  # per-patch outputs: the real slots are unchanged
                np.testing.assert_allclose(value[:, : reference[name].shape[1]], reference[name], rtol=0,
                                           atol=BATCH_ATOL, err_msg=f"{name} with {extra} more padding slots")

    check.__doc__ = f"{extra} more NaFlex padding slots"
    return check


# === Cases ===


# Trainable weights that get no gradient in any model, and why.
NO_GRADIENT = {
    r"/key/bias$": "a key bias adds the same q.b to every logit of a query: softmax ignores it (zero gradient)",
}


@dataclasses.dataclass
class Case:
    """How to build, feed and train one tiny model of a class.

    build: a fresh model (float32 unless a dtype policy is set globally), no weights set.
    inputs: `(rng) -> x`, a batch of `BATCH` model inputs (what `model(x)` takes).
    predict_inputs: `x -> what predict takes` (raw data for a task with a preprocessor); None: x.
    prepare: after the weights are set (e.g. recompute the zero-shot class embeddings).
    shapes: checks of other input shapes, `(model, x, reference) -> None`.
    train_data: `x -> (x, y, sample_weight)` of one training step.
    freeze: `model -> None`: makes part of the model non-trainable (what `train` proves).
    no_gradient: {regex of a trainable weight path: why it gets no gradient in the step}.
    """

    cls: type
    build: Callable
    inputs: Callable
    predict_inputs: Optional[Callable] = None
    prepare: Optional[Callable] = None
    shapes: tuple = ()
    train_data: Optional[Callable] = None
    freeze: Optional[Callable] = None
    no_gradient: dict = dataclasses.field(default_factory=lambda: dict(NO_GRADIENT))
    fit_kwargs: dict = dataclasses.field(default_factory=dict)


def _models():
    from keras_siglip import models

    return models


VOCAB, TEXT_LENGTH, IMAGE = 32, 8, 16
TOWER = dict(width=16, depth=1, num_heads=2, mlp_dim=32)


def vision_encoder(input_format="images", patch_size=8, **overrides):
    # Every image tower (SigLIP, NaFlex, CapPa, LiT, PaliGemma, 3T) has these
    # sizes: on JAX each eager op compiles once for all of them.
    return _models().SigLIPVisionEncoder(patch_size=patch_size, image_size=IMAGE, input_format=input_format,
                                         **{**TOWER, **overrides})


def text_encoder(vocabulary_size=VOCAB, **overrides):
    return _models().SigLIPTextEncoder(vocabulary_size=vocabulary_size, sequence_length=TEXT_LENGTH,
                                       num_classes=16, **{**TOWER, **overrides})


def siglip_backbone(input_format="images", vocabulary_size=VOCAB):
    return _models().SigLIPBackbone(vision_encoder(input_format), text_encoder(vocabulary_size))


def two_tower_inputs(rng, vocabulary_size=VOCAB):
    return {"images": uniform_images(rng, BATCH, IMAGE), "token_ids": token_ids(rng, BATCH, TEXT_LENGTH, vocabulary_size)}


# Patch grids other than the learned 2 x 2 position grid (resized), padded to 4.
NAFLEX_GRIDS, NAFLEX_PATCHES = [(2, 2), (1, 3), (3, 1)], 4


def naflex_two_tower_inputs(rng):
    return {**naflex_batch(NAFLEX_GRIDS, NAFLEX_PATCHES, 8 * 8 * 3, seed=int(rng.integers(1 << 30))),
            "token_ids": token_ids(rng, BATCH, TEXT_LENGTH, VOCAB)}


CAPTION_VOCAB, CAPTION_LENGTH = 20, 8
CAPPA = dict(vocabulary_size=CAPTION_VOCAB, patch_size=8, image_size=IMAGE, max_length=CAPTION_LENGTH,
             decoder_depth=1, **TOWER,
             # Explicit (not inherited) decoder sizes and biases: the config round trip must keep them.
             decoder_width=16, decoder_num_heads=2, decoder_mlp_dim=32, decoder_bias=True)


def cappa_backbone(**overrides):
    return _models().CapPaBackbone(**{**CAPPA, **overrides})


def caption_inputs(rng, vocabulary_size=CAPTION_VOCAB):
    return {"images": uniform_images(rng, BATCH, IMAGE),
            "token_ids": token_ids(rng, BATCH, CAPTION_LENGTH, vocabulary_size)}


def lit_decoder_backbone():
    return _models().LiTDecoderBackbone(
        vision_encoder(), vocabulary_size=CAPTION_VOCAB, max_length=CAPTION_LENGTH, decoder_width=16,
        decoder_depth=1, decoder_num_heads=2, decoder_mlp_dim=32)


PALI = dict(vocabulary_size=32, image_size=IMAGE, num_layers=1, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=16, intermediate_dim=32, head_dim=8, vit_patch_size=8, vit_hidden_dim=16,
            vit_num_layers=1, vit_num_heads=2, vit_intermediate_dim=32,  # the ViT: TOWER's sizes
            # Gemma 2's options, each biting: a query scalar != head_dim, soft caps
            # near the logits' size, post norms, a window shorter than the sequence.
            query_pre_attn_scalar=4, attention_logit_soft_cap=3.0, final_logit_soft_cap=5.0,
            use_post_norms=True, sliding_window=4)
PALI_LENGTH = 8


def pali_gemma_inputs(rng):
    """`[BOS] prefix(3) suffix(3) EOS`, the suffix causal."""
    ids = token_ids(rng, BATCH, PALI_LENGTH, PALI["vocabulary_size"], low=3)
    ids[:, 0], ids[:, 7] = 2, 1
    return {"images": uniform_images(rng, BATCH, IMAGE), "token_ids": ids,
            "padding_mask": np.ones((BATCH, PALI_LENGTH), "int32"),
            "response_mask": np.tile(np.array([0, 0, 0, 0, 1, 1, 1, 1], "int32"), (BATCH, 1))}


def pali_gemma_train(x):
    y = np.concatenate([x["token_ids"][:, 1:], np.zeros((BATCH, 1), "int32")], 1)
    weights = np.tile(np.array([0, 0, 0, 1, 1, 1, 1, 0], "float32"), (BATCH, 1))
    return x, y, weights


def three_towers():
    models = _models()
    return models.ThreeTowersBackbone(vision_encoder(), text_encoder(), third_tower=vision_encoder())


ZERO_SHOT_LABELS = ["red circle", "blue square", "green triangle"]


def zero_shot_classifier():
    from tests.helpers import train_sentencepiece

    models = _models()
    tokenizer = models.SigLIPTokenizer(train_sentencepiece("gemma"), pad_token="<pad>")
    preprocessor = models.SigLIPPreprocessor(tokenizer, models.SigLIPImageConverter(image_size=(IMAGE, IMAGE)),
                                             sequence_length=TEXT_LENGTH)
    backbone = siglip_backbone(vocabulary_size=tokenizer.vocabulary_size())
    # One template: the three class texts embed as a batch of 3, the shapes of every other case.
    return models.SigLIPZeroShotClassifier(backbone, preprocessor, ZERO_SHOT_LABELS, ("a photo of a {}.",))


def zero_shot_prepare(model):
    from keras_siglip.models.siglip.siglip_zero_shot_classifier import class_text_embeddings

    model.class_scores.class_embeddings.assign(
        class_text_embeddings(model.backbone, model.preprocessor, model.class_names, model.templates))


def zero_shot_raw_images(rng):
    return rng.integers(0, 256, (BATCH, IMAGE, IMAGE, 3)).astype("uint8")


def zero_shot_inputs(rng):
    from keras import ops

    from keras_siglip.models import SigLIPImageConverter

    converter = SigLIPImageConverter(image_size=(IMAGE, IMAGE))
    return {"images": np.asarray(ops.convert_to_numpy(converter(zero_shot_raw_images(rng)))).astype("float32")}


LOC_TOKENS = 8


def locca_captioner():
    return _models().LocCaCaptioner(cappa_backbone(vocabulary_size=CAPTION_VOCAB + LOC_TOKENS), masked_pred_prob=0.5,
                                    seed=1, num_loc_tokens=LOC_TOKENS)


def locca_inputs(rng):
    return {**caption_inputs(rng, CAPTION_VOCAB + LOC_TOKENS), "tasks": np.array([0, 1, 2], "int32")}


def pretrainer():
    return _models().SigLIP2Pretrainer(siglip_backbone(), total_steps=4, distillation_start=None,
                                       num_loc_tokens=LOC_TOKENS, seed=3)


def pretrainer_inputs(rng):
    x = two_tower_inputs(rng)
    x["decoder_token_ids"] = token_ids(rng, BATCH, TEXT_LENGTH, VOCAB + LOC_TOKENS)
    targets = x["decoder_token_ids"].copy()
    targets[:, :2] = 0  # an unscored prefix
    x["decoder_targets"] = targets
    x["tasks"] = np.array([0, 1, 2], "int32")
    return x


ACTIVE_BATCH = 4


def active_curation():
    return _models().ActiveCurationTrainer(siglip_backbone(), siglip_backbone(), num_chunks=1, seed=5)


def active_curation_inputs(rng):
    return two_tower_inputs(rng)


def active_curation_train(x):
    rng = np.random.default_rng(13)
    return {"images": uniform_images(rng, ACTIVE_BATCH, IMAGE),
            "token_ids": token_ids(rng, ACTIVE_BATCH, TEXT_LENGTH, VOCAB)}, None, None


def _x_only(x):
    return x, None, None


def _captions(x):
    return x, x["token_ids"], None


def _lock_image_tower(model):
    from keras_siglip.transfer import lock_image_tower

    lock_image_tower(model.backbone if hasattr(model, "backbone") else model)


def _freeze_image_tower(model):
    from keras_siglip.transfer import freeze_image_tower

    freeze_image_tower(model)


def _freeze(attribute):
    def freeze(model):
        part = model
        for name in attribute.split("."):
            part = getattr(part, name)
        part.trainable = False

    freeze.__doc__ = attribute
    return freeze


def cases():
    """{case name: Case}."""
    m = _models()
    other_size = check_other_image_size((24, 16))
    return {
        "siglip_backbone": Case(  # the one case whose image tower trains (the others lock it: cheaper on JAX)
            m.SigLIPBackbone, siglip_backbone, two_tower_inputs, shapes=(other_size,),
            train_data=_x_only, freeze=_freeze("text_encoder")),
        "siglip_backbone_naflex": Case(
            m.SigLIPBackbone, lambda: siglip_backbone("naflex"), naflex_two_tower_inputs,
            shapes=(check_more_padding(4),), train_data=_x_only, freeze=_lock_image_tower),
        "siglip_vision_encoder": Case(
            m.SigLIPVisionEncoder, vision_encoder, lambda rng: uniform_images(rng, BATCH, IMAGE),
            shapes=(check_other_image_size((24, 16)),)),
        "siglip_text_encoder": Case(
            m.SigLIPTextEncoder, text_encoder, lambda rng: token_ids(rng, BATCH, TEXT_LENGTH, VOCAB)),
        "cappa_backbone": Case(
            m.CapPaBackbone, cappa_backbone, caption_inputs, shapes=(check_shorter_text(5), other_size)),
        "lit_decoder_backbone": Case(
            m.LiTDecoderBackbone, lit_decoder_backbone, caption_inputs, shapes=(check_shorter_text(5), other_size)),
        "pali_gemma_backbone": Case(
            m.PaliGemmaBackbone, lambda: m.PaliGemmaBackbone(**PALI), pali_gemma_inputs,
            shapes=(check_shorter_text(5, masks=("padding_mask", "response_mask")),)),
        "three_towers_backbone": Case(
            m.ThreeTowersBackbone, three_towers, two_tower_inputs, shapes=(other_size,), train_data=_x_only,
            freeze=_lock_image_tower),  # and the third tower, frozen by design
        "siglip_image_classifier": Case(
            m.SigLIPImageClassifier, lambda: m.SigLIPImageClassifier(vision_encoder(), 3),
            lambda rng: uniform_images(rng, BATCH, IMAGE), shapes=(check_other_image_size((24, 16)),),
            train_data=lambda x: (x, np.array([0, 1, 2]), None), freeze=_freeze("backbone")),
        "siglip_zero_shot_classifier": Case(
            m.SigLIPZeroShotClassifier, zero_shot_classifier, zero_shot_inputs,
            predict_inputs=lambda x: zero_shot_raw_images(np.random.default_rng(0)), prepare=zero_shot_prepare,
            shapes=(other_size,)),
        "cappa_captioner": Case(
            m.CapPaCaptioner, lambda: m.CapPaCaptioner(cappa_backbone(), seed=1), caption_inputs,
            shapes=(check_shorter_text(5),), train_data=_captions, freeze=_freeze("backbone.vit")),
        "locca_captioner": Case(
            m.LocCaCaptioner, locca_captioner, locca_inputs, shapes=(check_shorter_text(5),),
            train_data=_captions, freeze=_freeze("backbone.vit")),
        "lit_decoder": Case(
            m.LiTDecoder, lambda: m.LiTDecoder(lit_decoder_backbone()), caption_inputs,
            shapes=(check_shorter_text(5),), train_data=_captions,
            freeze=lambda model: None),  # the encoder is frozen by construction (freeze_encoder=True)
        "pali_gemma_causal_lm": Case(
            m.PaliGemmaCausalLM, lambda: m.PaliGemmaCausalLM(m.PaliGemmaBackbone(**PALI)), pali_gemma_inputs,
            shapes=(check_shorter_text(5, masks=("padding_mask", "response_mask")),), train_data=pali_gemma_train,
            freeze=_freeze_image_tower),
        "siglip2_pretrainer": Case(
            m.SigLIP2Pretrainer, pretrainer, pretrainer_inputs, train_data=_x_only,
            shapes=(check_shorter_text(5, key="decoder_token_ids", masks=("decoder_targets",)),),
            freeze=_freeze("backbone.vision_encoder")),
        "active_curation_trainer": Case(
            m.ActiveCurationTrainer, active_curation, active_curation_inputs, train_data=active_curation_train,
            shapes=(other_size,),
            freeze=_freeze("backbone.vision_encoder"), fit_kwargs={"batch_size": ACTIVE_BATCH}),
    }


# === The checks ===


def _trace_counter(model):
    """Counts Python executions of `model.predict_step`: on JAX and TensorFlow,
    traces of the compiled predict function."""
    calls = []
    step = model.predict_step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    model.predict_step = counted
    return calls


def _first_predict(case, model, x, state):
    if "compiled" not in state:
        state["data"] = case.predict_inputs(x) if case.predict_inputs else x
        state["compiled"] = predicted(model, state["data"])
        state["traced"], state["function"] = len(state["calls"]), model.predict_function
    return state["compiled"]


def check_golden(case, model, x, reference, golden, state):
    """Compiled `predict` equals the eager call and the stored golden numbers."""
    if golden is None:
        raise AssertionError("no golden numbers: run python -m tests.contract --regenerate CASE")
    compiled = _first_predict(case, model, x, state)
    assert_close(compiled, reference, GOLDEN_ATOL, "compiled predict vs eager call")
    assert_golden(compiled, {k: v for k, v in golden.items() if k != "model"})
    assert model_summary(model) == golden["model"], f"model {model_summary(model)} vs golden {golden['model']}"


def check_retrace(case, model, x, state):
    """A second `predict` of the same shapes reuses the compiled function."""
    import keras

    compiled = _first_predict(case, model, x, state)
    again = predicted(model, state["data"])
    assert_close(again, compiled, 0.0, "second predict")
    if keras.backend.backend() == "torch":
        return  # torch runs the step eagerly: nothing is traced or compiled
    traced, calls = state["traced"], state["calls"]
    assert traced >= 1 and len(calls) == traced, f"predict step traced {traced}, then {len(calls)} times"
    assert model.predict_function is state["function"], "the predict function was rebuilt"


def check_batch(model, x, reference):
    """Row i of the batch equals example i alone; `(B, B)` pair logits compare
    on the diagonal (one example has one pair)."""
    for i in range(BATCH):
        alone = eager(model, rows(x, i, i + 1))
        for name, value in alone.items():
            full = reference[name]
            if value.ndim == 2 and value.shape == (1, 1) and full.shape == (BATCH, BATCH):
                want = full[i : i + 1, i : i + 1]
            else:
                want = full[i : i + 1]
            np.testing.assert_allclose(value, want, rtol=0, atol=BATCH_ATOL, err_msg=f"{name}: example {i} alone")


def check_config(case, model, x, reference):
    """A `from_config` clone with the weights: the same outputs. Returns the clone."""
    config = model.get_config()
    clone = case.cls.from_config(config)
    clone.set_weights(model.get_weights())
    check_restored(model, clone, "from_config")
    assert_close(eager(clone, x), reference, SAME_ATOL, "from_config + set_weights")
    return clone


def check_int8(case, clone, x, reference):
    """`quantize("int8")`: every Dense / EinsumDense holds an int8 kernel, the
    outputs stay within `INT8_FLOOR` cosine of float32, and the quantized model
    rebuilds from its config (what loading a quantized preset or file does)."""
    import keras

    clone.quantize("int8")
    layers = [layer for layer in clone._flatten_layers() if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))]
    assert layers
    for layer in layers:
        assert layer.quantization_mode == "int8", f"{layer.path} not quantized"
        assert str(layer._kernel.dtype) == "int8", f"{layer.path} kernel is {layer._kernel.dtype}"
    ours = eager(clone, x)
    for name, value in reference.items():
        if name.endswith("logits") and len(reference) > 1 and value.ndim == 2:
            continue  # pair logits: scores of the embeddings compared here
        assert np.isfinite(ours[name]).all(), name
        cosine = min_row_cosine(ours[name], value)
        assert cosine > INT8_FLOOR, f"{name}: int8 min row cosine {cosine:.5f} <= {INT8_FLOOR}"
    rebuilt = case.cls.from_config(clone.get_config())
    rebuilt.set_weights(clone.get_weights())
    assert_close(eager(rebuilt, x), ours, SAME_ATOL, "quantized model from its config")


def trainable_flags(model):
    return sorted((v.path, bool(v.trainable)) for v in model.weights)


def check_restored(model, restored, what):
    """A restored model is of the same class, has the same config and the same
    frozen weights."""
    assert type(restored) is type(model), f"{what}: {type(restored).__name__}"
    assert config_json(restored) == config_json(model), f"{what}: get_config differs"
    assert trainable_flags(restored) == trainable_flags(model), f"{what}: trainable flags differ"


def config_json(model):
    """`get_config` as canonical JSON: every argument survives a round trip."""
    import keras

    return json.dumps(keras.saving.serialize_keras_object(model)["config"], sort_keys=True, default=str)


def check_keras_file(case, model, x, reference, tmp_path):
    import keras

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    check_restored(model, restored, ".keras")
    assert_close(eager(restored, x), reference, SAME_ATOL, ".keras round trip")


def check_preset(case, model, x, reference, tmp_path):
    path = str(tmp_path / "preset")
    model.save_to_preset(path)
    from keras_hub.models import Backbone

    if isinstance(model, Backbone):
        assert sorted(os.listdir(path)) == ["config.json", "metadata.json", "model.weights.h5"], os.listdir(path)
    restored = case.cls.from_preset(path)
    check_restored(model, restored, "preset")
    assert_close(eager(restored, x), reference, SAME_ATOL, "preset round trip")
    if case.predict_inputs is not None:  # raw data through the restored preprocessor
        raw = case.predict_inputs(x)
        assert_close(predicted(restored, raw), predicted(model, raw), SAME_ATOL, "preset round trip, raw inputs")


def check_mixed(case, model, x, reference):
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        mixed = case.build()
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.dtype_policy.name == "mixed_bfloat16", mixed.dtype_policy.name
    mixed.set_weights(model.get_weights())
    outputs = eager(mixed, x)
    for name, value in reference.items():
        assert np.isfinite(outputs[name]).all(), f"{name}: not finite in mixed_bfloat16"
        error = np.linalg.norm(outputs[name] - value) / np.linalg.norm(value)
        assert error <= MIXED_RTOL, f"{name}: mixed_bfloat16 relative error {error:.4f} > {MIXED_RTOL}"


def check_saved_model(model, x, reference, tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "saved_model")

    def spec(value):  # any batch size; the other dimensions as given (an image tower needs its size)
        return tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype))

    signature = {k: spec(v) for k, v in x.items()} if isinstance(x, dict) else spec(x)
    model.export(path, format="tf_saved_model", input_signature=[signature], verbose=False)
    reloaded = tf.saved_model.load(path)
    inputs = {k: tf.constant(v) for k, v in x.items()} if isinstance(x, dict) else tf.constant(x)
    assert_close(flatten_outputs(reloaded.serve(inputs)), reference, GOLDEN_ATOL, "SavedModel")


def check_train(case, model, x):
    """One SGD step: the trainable weights that get a gradient change (all but
    the case's documented `no_gradient` ones), frozen and non-trainable ones do not."""
    import keras

    case.freeze(model)
    # Compiled on JAX (one XLA program, about 3 s of CPU; its eager step compiles
    # every forward and backward op separately: twice that), eager elsewhere
    # (TensorFlow's trace costs more than the tiny eager step; torch is eager anyway).
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=keras.backend.backend() != "jax")
    trainable = {id(v) for v in model.trainable_weights}
    variables = [v for v in model.weights if "float" in str(v.dtype)]
    assert len(trainable) < len(variables), "nothing is frozen: the check proves nothing about frozen weights"
    before = [to_numpy(v).copy() for v in variables]
    data_x, y, sample_weight = case.train_data(x)
    kwargs = {"batch_size": len(first(data_x)), **case.fit_kwargs}
    history = model.fit(data_x, y, sample_weight=sample_weight, epochs=1, shuffle=False, verbose=0, **kwargs)
    assert np.isfinite(history.history["loss"]).all()
    problems = {"frozen or non-trainable but changed": [], "trainable but unchanged": [],
                "documented as gradient-free but changed": []}
    for v, old in zip(variables, before):  # paths repeat (two towers of one class): go by variable
        changed = not np.array_equal(to_numpy(v), old)
        exempt = any(re.search(pattern, v.path) for pattern in case.no_gradient)
        if id(v) not in trainable and changed:
            problems["frozen or non-trainable but changed"].append(v.path)
        elif id(v) in trainable and not exempt and not changed:
            problems["trainable but unchanged"].append(v.path)
        elif id(v) in trainable and exempt and changed:
            problems["documented as gradient-free but changed"].append(v.path)
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, problems


def run_contract(name, case, applicable, tmp_path):
    """Run the applicable checks of one case; returns `{check: error}` of the
    failed ones (every check runs even when an earlier one failed)."""
    import keras

    golden = load_golden().get(name)
    model, x = build(case)
    state = {"calls": _trace_counter(model)}
    reference = eager(model, x)
    failures = {}
    clone = None

    def attempt(check, fn, *args):
        if check not in applicable:
            return None
        try:
            return fn(*args)
        except Exception as error:  # collected: the report names every broken check
            failures[check] = error
            return None

    attempt("golden", check_golden, case, model, x, reference, golden, state)
    attempt("retrace", check_retrace, case, model, x, state)
    attempt("batch", check_batch, model, x, reference)
    for shape_check in case.shapes:
        attempt("shapes", shape_check, model, x, reference)
    clone = attempt("config", check_config, case, model, x, reference)
    if clone is not None or "config" not in applicable:
        attempt("int8", check_int8, case, clone or model, x, reference)
    attempt("keras_file", check_keras_file, case, model, x, reference, tmp_path)
    attempt("preset", check_preset, case, model, x, reference, tmp_path)
    attempt("mixed", check_mixed, case, model, x, reference)
    if keras.backend.backend() == "tensorflow":
        attempt("saved_model", check_saved_model, model, x, reference, tmp_path)
    attempt("train", check_train, case, model, x)
    return failures


# === Building ===


def build(case):
    """`(model, x)`: the case's model with numpy weights and its fixed input."""
    import keras

    keras.utils.set_random_seed(0)
    model = case.build()
    set_numpy_weights(model)
    if case.prepare:
        case.prepare(model)
    return model, case.inputs(np.random.default_rng(0))


def regenerate(names=None):
    """Write the golden numbers of the named cases (default all) under JAX."""
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("Regenerate the golden numbers under KERAS_BACKEND=jax.")
    golden = load_golden()
    all_cases = cases()
    for name in names or sorted(all_cases):
        case = all_cases[name]
        model, x = build(case)
        data = case.predict_inputs(x) if case.predict_inputs else x
        golden[name] = {"model": model_summary(model), **summary(predicted(model, data))}
        print("regenerated", name)
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--regenerate":
        raise SystemExit("usage: KERAS_BACKEND=jax python -m tests.contract --regenerate [case ...]")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    regenerate(args[1:])
