"""`model.quantize(mode)`: accuracy per family and speed / weight memory per backend.

    python -m benchmarks.quantization                        # jax, tensorflow, torch; B/16 towers
    python -m benchmarks.quantization --backends torch --config tiny --images 96 --repeats 1 --out /tmp/q.json
    python -m benchmarks.quantization --torch-threads 1      # on a busy shared machine

Modes: float32 (the reference), Keras' `int8` (int8 kernel with one scale per
output channel, inputs quantized per row at run time, integer matmul), `int4`
(weight-only: 4-bit kernel packed two per byte, one scale per output channel,
unpacked and matmul'ed in float at run time) and `float8` (Keras' float8
*training* mode: inputs and kernel quantized-dequantized through float8_e4m3fn
around a float32 matmul; the kernel stays float32).

Each backend runs in its own subprocess, one after the other; rows stream as
`@@ROW <json>` lines and are printed as they come. Per backend:

1. Accuracy (float32 outputs are the reference):
   - `siglip2_fixed`: the shipped `siglip2_shapes_tiny` model on held-out
     shapes images (seed 1; the preset trained on seed 0): min / mean cosine
     of image and text embeddings to float's, and zero-shot top-1 accuracy of
     `SigLIPZeroShotClassifier` over the 48 "<color> <shape>" classes (as
     `keras-siglip demo` builds it), next to float's and chance.
   - `siglip2_naflex`: the same shipped weights in a NaFlex tower (the weights
     carry over unchanged: float outputs equal the fixed-resolution ones to
     1e-6); the square 48 px images become 8 x 8 patches of 6 px.
   - `cappa`, `lit_decoder`: random weights plus N(0, 0.05) noise on every
     weight (no shipped model); cosine of each token's logits to float's and
     agreement of their argmax.
   - `pali_gemma`: a small random PaliGemma, perturbed as the quantize tests
     do (EOS embedding row zeroed so greedy generation never stops early):
     argmax agreement of the teacher-forced logits, and of
     `PaliGemmaCausalLM.generate(..., token_ids=...)` greedy tokens (no
     tokenizer needed) with float's (`token_match`: same token at the same
     position; `prefix`: mean share of each row before the first
     difference). With these weights the argmax is almost always the current
     input token (Gemma's embedding, scaled by sqrt(width) and tied to the
     output, dominates the residual stream): an easy case, reported as
     `copies_input_token`. `pali_gemma_mixing`: the Gemma blocks' kernels get
     N(0, 0.13) instead (their init has sd 0.088), so the blocks decide most
     argmaxes and the logits are as flat as random ones (top-2 margin a
     fraction of a standard deviation), and the per-layer gain is above 1, so
     errors grow with depth: a hard case. A trained model lies between.
2. Speed and weight memory: the SigLIP image and text towers of `--config`
   (`benchmarks.models.CONFIGS`; B/16 at 224 px and the B text tower, length
   64, 32k vocabulary) with random weights shared with HF transformers'
   `SiglipModel`; batch `--batch`. Forward as the other rows here
   (`benchmarks.backends.keras_forward`: jax.jit of stateless_call,
   tf.function(jit_compile=True), torch eager under no_grad); the first call
   (compile) is excluded, the implementations are timed interleaved
   (`timing.measure_interleaved`), medians. Weight memory: bytes of the
   tower's variables (Keras) / state dict (HF, packed int8 weights included).
3. The peer: HF's towers in float32 and after
   `torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
   dtype=torch.qint8)` (fbgemm int8 kernels), pooled-output cosine to HF's own
   float output; ratio = peer time / our time (> 1: ours faster).

Writes `quantization.json` and `quantization.png` beside this file (or `--out`).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks import runner, worker
from benchmarks.worker import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROW_PREFIX = "@@ROW "
LOG_PREFIX = "@@LOG "
MODES = ("float32", "int8", "int4", "float8")
QUANTIZED = MODES[1:]
PRESET = "siglip2_shapes_tiny"
HELD_OUT_SEED = 1  # the shipped preset trained on ShapesDataset seed 0
EOS_ID = 1

# Random-weight families (no shipped model): small, cheap on every backend.
PALI_GEMMA = dict(vocabulary_size=256, image_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=1,
                  hidden_dim=128, intermediate_dim=256, head_dim=32, vit_patch_size=8, vit_hidden_dim=64,
                  vit_num_layers=2, vit_num_heads=2, vit_intermediate_dim=128)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quantization", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all three)")
    parser.add_argument("--config", default="B/16", choices=("B/16", "w256-d4", "tiny"),
                        help="tower size of the speed rows (benchmarks.models.CONFIGS)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the speed rows (images and texts)")
    parser.add_argument("--images", type=int, default=1000, help="held-out shapes images for zero-shot")
    parser.add_argument("--new-tokens", type=int, default=16, help="PaliGemma greedy tokens generated")
    parser.add_argument("--repeats", type=int, default=4, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compile) call")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads in each worker (default: torch's own)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each backend, wait up to this long for no other busy process")
    parser.add_argument("--out", default=os.path.join(HERE, "quantization.json"),
                        help="the JSON written; the chart goes beside it as .png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- worker (one backend per process) --------------------------------------------------


def _log(text):
    print(LOG_PREFIX + text, flush=True)


def _emit(row):
    print(ROW_PREFIX + json.dumps(row), flush=True)


def cosines(reference, value):
    """min / mean cosine of the rows (last axis = features) of `value` to `reference`."""
    import numpy as np

    a = np.reshape(np.asarray(reference, np.float64), (-1, np.shape(reference)[-1]))
    b = np.reshape(np.asarray(value, np.float64), (-1, np.shape(value)[-1]))
    cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"min_cos": float(np.min(cos)), "mean_cos": float(np.mean(cos)),
            "finite": bool(np.all(np.isfinite(b)))}


def perturbed(model, seed=0):
    """Random weights everywhere (zero biases, unit norm scales included), so a
    layer that drops or misreads a quantized kernel shows."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = ops.convert_to_numpy(weight)
        weight.assign((value + 0.05 * rng.normal(size=value.shape)).astype(value.dtype))
    return model


def quantized_copy(model, mode):
    """A fresh model with `model`'s weights, quantized (`float32`: a plain copy)."""
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    if mode != "float32":
        copy.quantize(mode)
    return copy


def weight_bytes(variables):
    import ml_dtypes
    import numpy as np

    total = 0
    for v in variables:
        name = str(v.dtype).split(".")[-1]
        dtype = np.dtype(getattr(ml_dtypes, name, name))
        total += int(np.prod(v.shape)) * dtype.itemsize
    return total


def torch_bytes(module):
    """Bytes of a torch module's state dict, packed quantized weights included."""
    import torch

    def size(value):
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(v) for v in module.state_dict().values())


def _predict(model, x):
    import numpy as np

    # One batch: a SigLIP backbone's pairwise logits are (batch, batch), which
    # `predict` cannot concatenate across batches of different sizes.
    out = model.predict(x, verbose=0, batch_size=len(next(iter(x.values()))))
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {"logits": np.asarray(out)}


def shipped_accuracy(args, emit):
    """The shipped fixed-res SigLIP 2 model and its NaFlex twin: cosines and zero-shot."""
    import numpy as np

    from keras_siglip.data import shapes
    from keras_siglip.layers.naflex import NaFlexImageConverter
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor, SigLIPZeroShotClassifier
    from keras_siglip.models.siglip.siglip_zero_shot_classifier import class_text_embeddings

    fixed = SigLIPBackbone.from_preset(PRESET)
    preprocessor = SigLIPPreprocessor.from_preset(PRESET)
    size = fixed.vision_encoder.image_size[0]
    patch = fixed.vision_encoder.get_config()["patch_size"]
    config = fixed.get_config()
    config["vision_encoder"]["config"]["input_format"] = "naflex"
    naflex = SigLIPBackbone.from_config(config)
    naflex.set_weights(fixed.get_weights())
    data = shapes.ShapesDataset(args.images, seed=HELD_OUT_SEED, image_size=size).arrays()
    names = [shapes.with_article(n) for n in shapes.class_names()]
    chance = 1.0 / len(names)
    x = preprocessor({"images": data["images"], "texts": list(data["captions"])})
    x = {"images": np.asarray(x["images"]), "token_ids": np.asarray(x["token_ids"])}
    patches = NaFlexImageConverter(patch, (size // patch) ** 2)(data["images"])
    x_naflex = {**{k: np.asarray(v) for k, v in patches.items()}, "token_ids": x["token_ids"]}
    labels = np.asarray(data["labels"])

    def zero_shot_fixed(model):
        classifier = SigLIPZeroShotClassifier(model, preprocessor, class_names=names,
                                              templates=shapes.PROMPT_TEMPLATES)
        probabilities = classifier.predict(data["images"], batch_size=100, verbose=0)
        return float(np.mean(np.argmax(probabilities, -1) == labels))

    def zero_shot_naflex(model, images):
        # The classifier's arithmetic on a NaFlex tower: the class embedding
        # nearest each image embedding (the shared sigmoid is monotonic).
        classes = class_text_embeddings(model, preprocessor, names, shapes.PROMPT_TEMPLATES)
        return float(np.mean(np.argmax(images @ classes.T, -1) == labels))

    for family, source, inputs in (("siglip2_fixed", fixed, x), ("siglip2_naflex", naflex, x_naflex)):
        reference, float_accuracy = None, None
        for mode in MODES:
            start = time.perf_counter()
            model = quantized_copy(source, mode)
            out = _predict(model, inputs)
            if family == "siglip2_fixed":
                accuracy = zero_shot_fixed(model)
            else:
                accuracy = zero_shot_naflex(model, out["image_embeddings"])
            if mode == "float32":
                reference, float_accuracy = out, accuracy
            row = {"section": "accuracy", "family": family, "mode": mode, "backend": args.backend,
                   "weights": "shipped siglip2_shapes_tiny" + (" (as NaFlex)" if family == "siglip2_naflex" else ""),
                   "outputs": {key: cosines(reference[key], out[key])
                               for key in ("image_embeddings", "text_embeddings")},
                   "zero_shot": accuracy, "zero_shot_float": float_accuracy, "chance": chance,
                   "images": args.images, "seconds": time.perf_counter() - start}
            emit(row)


def random_accuracy(args, emit):
    """CapPa, LiT-decoder (logits) and PaliGemma (logits and greedy generation), random weights."""
    import keras
    import numpy as np
    from keras import ops

    from keras_siglip.models import (CapPaBackbone, LiTDecoderBackbone, PaliGemmaBackbone,
                                     PaliGemmaCausalLM, SigLIPVisionEncoder)

    rng = np.random.default_rng(0)
    batch = 8
    keras.utils.set_random_seed(0)
    cappa = CapPaBackbone(vocabulary_size=256, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=256,
                          image_size=32, max_length=16, decoder_depth=2)
    keras.utils.set_random_seed(0)
    lit = LiTDecoderBackbone(
        SigLIPVisionEncoder(patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=256, image_size=32),
        vocabulary_size=256, max_length=16, decoder_width=64, decoder_depth=2, decoder_num_heads=4,
        decoder_mlp_dim=256)
    images = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("float32")
    tokens = rng.integers(2, 256, (batch, 16)).astype("int32")
    for family, model in (("cappa", cappa), ("lit_decoder", lit)):
        perturbed(model)
        inputs = {"images": images, "token_ids": tokens}
        reference = None
        for mode in MODES:
            start = time.perf_counter()
            out = _predict(quantized_copy(model, mode), inputs)["logits"]
            reference = out if reference is None else reference
            emit({"section": "accuracy", "family": family, "mode": mode, "backend": args.backend,
                  "weights": "random + N(0, 0.05)", "outputs": {"logits": cosines(reference, out)},
                  "argmax_agreement": float(np.mean(np.argmax(out, -1) == np.argmax(reference, -1))),
                  "seconds": time.perf_counter() - start})

    length, prompt, new = 16, 8, args.new_tokens
    size = PALI_GEMMA["image_size"]
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    tokens = rng.integers(2, PALI_GEMMA["vocabulary_size"], (batch, length)).astype("int32")
    inputs = {"images": images, "token_ids": tokens, "padding_mask": np.ones_like(tokens),
              "response_mask": (np.arange(length)[None] >= prompt).repeat(batch, 0).astype("int32")}
    for family, block_noise in (("pali_gemma", 0.05), ("pali_gemma_mixing", 0.13)):
        keras.utils.set_random_seed(0)
        backbone = PaliGemmaBackbone(**PALI_GEMMA)
        noise = np.random.default_rng(0)
        for weight in backbone.weights:
            # N(0, 0.05) everywhere as in the quantize tests; "mixing": the Gemma
            # blocks' kernels get N(0, 0.13), so that the blocks, not the
            # (sqrt(width)-scaled, tied) embedding of the current token, decide
            # the next token.
            block = weight.path.startswith("gemma/") and "embedding" not in weight.path and "norm" not in weight.path
            value = ops.convert_to_numpy(weight)
            scale = block_noise if block else 0.05
            weight.assign((value + scale * noise.normal(size=value.shape)).astype(value.dtype))
        table = backbone.decoder.token_embedding.embeddings
        value = np.array(ops.convert_to_numpy(table))
        value[EOS_ID] = 0.0  # EOS gets logit 0 among random ones: no row stops early
        table.assign(value)
        reference = reference_ids = None
        for mode in MODES:
            start = time.perf_counter()
            model = quantized_copy(backbone, mode)
            logits = _predict(model, inputs)["logits"]
            ids = np.asarray(PaliGemmaCausalLM(model).generate(images, token_ids=tokens[:, :prompt],
                                                                max_new_tokens=new))
            if reference is None:
                reference, reference_ids = logits, ids
                top2 = np.sort(logits, -1)[..., -2:]
                character = {"copies_input_token": float(np.mean(np.argmax(logits, -1) == tokens)),
                             "median_top2_margin_sd": float(np.median(top2[..., 1] - top2[..., 0]) / np.std(logits))}
            same = ids == reference_ids
            first_difference = np.where(same.all(1), new, np.argmin(same, 1))
            emit({"section": "accuracy", "family": family, "mode": mode, "backend": args.backend,
                  "weights": "random + N(0, 0.05)" + ("" if block_noise == 0.05
                                                        else f", Gemma blocks + N(0, {block_noise})"),
                  "float_logits": character, "outputs": {"logits": cosines(reference, logits)},
                  "argmax_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1))),
                  "generate": {"new_tokens": new, "token_match": float(np.mean(same)),
                               "prefix": float(np.mean(first_difference / new)),
                               "rows_equal": float(np.mean(same.all(1)))},
                  "seconds": time.perf_counter() - start})


def speed(args, emit):
    """The image and text towers per mode, and HF's float / quantize_dynamic peer."""
    import copy

    import numpy as np
    import torch

    from benchmarks import backends, models, timing

    start = time.perf_counter()
    trio = models.build_trio(args.config, with_keras_hub=False, with_hf=True)
    ours, hf = trio["ours"], trio["hf"]
    hf_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(hf), {torch.nn.Linear}, dtype=torch.qint8)
    _log(f"[{args.backend}] built {args.config} towers (ours + HF, same weights) in "
         f"{time.perf_counter() - start:.0f} s")
    variants = {"float32": ours}
    quantize_s = {"float32": 0.0}
    for mode in QUANTIZED:
        start = time.perf_counter()
        model = quantized_copy(ours, mode)
        quantize_s[mode] = time.perf_counter() - start
        variants[mode] = model
    layer = next(l for l in variants["int4"]._flatten_layers() if l.quantization_mode == "int4"
                 and hasattr(l, "_int4_block_size"))
    int4_block = getattr(layer, "_int4_block_size", None)
    config = models.CONFIGS[args.config]
    rng = np.random.default_rng(0)
    v, t = config["vision_encoder"], config["text_encoder"]
    images = rng.uniform(-1, 1, (args.batch, v["image_size"], v["image_size"], 3)).astype("float32")
    token_ids = rng.integers(2, t["vocabulary_size"], (args.batch, t["sequence_length"])).astype("int32")
    token_ids[:, -1] = 1  # EOS at the pooled (last) position
    towers = (
        ("image", "vision_encoder", images, backends.hf_image_forward, "vision_model"),
        ("text", "text_encoder", token_ids, backends.hf_text_forward, "text_model"),
    )
    for tower, attribute, inputs, hf_forward, hf_attribute in towers:
        runs, first, out = {}, {}, {}
        for mode, model in variants.items():
            runs[mode] = backends.keras_forward(getattr(model, attribute), inputs)
        runs["hf float32"] = hf_forward(hf, inputs)
        runs["hf qint8"] = hf_forward(hf_int8, inputs)
        for name, (run, _) in runs.items():
            _log(f"[{args.backend}] {tower}: first call of {name} ...")
            first[name], value = timing.first_call(run)
            out[name] = backends.to_numpy(value)
        _log(f"[{args.backend}] {tower}: timing {args.repeats} calls each (interleaved) ...")
        summaries = timing.measure_interleaved({name: run for name, (run, _) in runs.items()},
                                               warmup=args.warmup, repeats=args.repeats)
        hf_models = {"hf float32": hf, "hf qint8": hf_int8}
        for name, (_, mode_text) in runs.items():
            is_hf = name.startswith("hf")
            reference = out["hf float32" if is_hf else "float32"]
            row = {"section": "speed", "tower": tower, "config": args.config, "batch": args.batch,
                   "backend": args.backend, "device": backends.device_kind(), "impl": "hf" if is_hf else "ours",
                   "mode": name.split(" ")[-1], "run": backends.mode_name(mode_text), "first_call_s": first[name],
                   **summaries[name], **cosines(reference, out[name]),
                   "weight_bytes": (torch_bytes(getattr(hf_models[name], hf_attribute)) if is_hf
                                    else weight_bytes(getattr(variants[name], attribute).variables))}
            if name == "hf float32":
                row["max_abs_diff_to_ours"] = float(np.max(np.abs(out[name] - out["float32"])))
            if not is_hf:
                row["quantize_s"] = quantize_s[name]
                if name == "int4":
                    row["int4_block_size"] = int4_block
            emit(row)


def run_worker(args):
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if keras.config.backend() != args.backend:
        raise SystemExit(f"KERAS_BACKEND={args.backend} but keras runs {keras.config.backend()}")
    import gc

    import torch

    import keras_siglip.models  # noqa: F401 (imports tensorflow, keras-hub, transformers' peers later)

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    # Every `quantize` ends with a `gc.collect()`, which walks the millions of
    # objects of the imported frameworks (0.6 s each here); frozen, they are skipped.
    gc.freeze()
    for name, section in (("accuracy: shipped SigLIP 2", shipped_accuracy),
                          ("accuracy: CapPa, LiT-decoder, PaliGemma", random_accuracy),
                          (f"speed: {args.config} towers", speed)):
        start = time.perf_counter()
        _log(f"[{args.backend}] {name} ...")
        section(args, _emit)
        _log(f"[{args.backend}] {name} done in {time.perf_counter() - start:.0f} s")
    return 0


# --- parent: one subprocess per backend, then the tables, JSON and chart --------------


def _summary(row):
    if "error" in row:
        return f"[{row['backend']}] FAILED: {row['error']}"
    if row["section"] == "speed":
        return (f"[{row['backend']}] {row['tower']:5s} {row['impl']:4s} {row['mode']:7s} "
                f"{row['median_ms']:9.1f} ms  {row['weight_bytes'] / 2**20:7.1f} MiB  "
                f"cos min {row['min_cos']:.5f}  (first call {row['first_call_s']:.1f} s)")
    cos = "  ".join(f"{k} cos min {v['min_cos']:.5f} mean {v['mean_cos']:.5f}" for k, v in row["outputs"].items())
    extra = ""
    if "zero_shot" in row:
        extra = f"  zero-shot {row['zero_shot']:.1%} (float {row['zero_shot_float']:.1%}, chance {row['chance']:.1%})"
    if "argmax_agreement" in row:
        extra += f"  argmax agree {row['argmax_agreement']:.1%}"
    if "generate" in row:
        extra += f"  greedy tokens equal {row['generate']['token_match']:.1%}"
    return f"[{row['backend']}] {row['family']:14s} {row['mode']:7s} {cos}{extra}"


def run_backend(backend, args):
    cmd = [sys.executable, "-m", "benchmarks.quantization", "--worker", "--backend", backend,
           "--config", args.config, "--batch", str(args.batch), "--images", str(args.images),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"=== {backend}", flush=True)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        monitor = runner._Monitor(exclude={proc.pid})
        monitor.start()
        for line in proc.stdout:
            if line.startswith(ROW_PREFIX):
                rows.append(json.loads(line[len(ROW_PREFIX):]))
                print("  " + _summary(rows[-1]), flush=True)
            elif line.startswith(LOG_PREFIX):
                print("  " + line[len(LOG_PREFIX):].rstrip(), flush=True)
        code = proc.wait()
        monitor.stop()
        if code:
            log.seek(0)
            rows.append({"section": "error", "backend": backend,
                         "error": f"worker exited with {code}: {log.read()[-2000:]}"})
            print("  " + _summary(rows[-1]), flush=True)
    busy = list(monitor.busy.values())
    for other in busy:
        print(f"WARNING: pid {other['pid']} used {other['cpu_percent']}% CPU during the {backend} worker "
              f"({other['cmd'][:80]}); its timings are unreliable", flush=True)
    print(f"=== {backend} done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows, time.perf_counter() - start, busy


def speed_ratios(rows):
    """Per (backend, tower): our modes and HF's relative to float, and peer time / our time."""
    table = {}
    for r in rows:
        if r.get("section") == "speed":
            table.setdefault((r["backend"], r["tower"]), {})[(r["impl"], r["mode"])] = r
    out = []
    for (backend, tower), entries in table.items():
        ours_float, hf_float, hf_int8 = entries[("ours", "float32")], entries[("hf", "float32")], entries[("hf", "qint8")]
        for mode in MODES:
            r = entries[("ours", mode)]
            out.append({
                "backend": backend, "tower": tower, "mode": mode, "ms": r["median_ms"], "min_cos": r["min_cos"],
                "speedup_vs_float": ours_float["median_ms"] / r["median_ms"],
                "memory_vs_float": r["weight_bytes"] / ours_float["weight_bytes"], "weight_bytes": r["weight_bytes"],
                # The peer's matching path: its float32 for float32, its dynamic int8 for our quantized modes.
                "peer_ms": (hf_float if mode == "float32" else hf_int8)["median_ms"],
                "peer_over_ours": (hf_float if mode == "float32" else hf_int8)["median_ms"] / r["median_ms"],
            })
        out.append({"backend": backend, "tower": tower, "mode": "hf qint8", "ms": hf_int8["median_ms"],
                    "min_cos": hf_int8["min_cos"], "speedup_vs_float": hf_float["median_ms"] / hf_int8["median_ms"],
                    "memory_vs_float": hf_int8["weight_bytes"] / hf_float["weight_bytes"],
                    "weight_bytes": hf_int8["weight_bytes"], "hf_float_ms": hf_float["median_ms"]})
    return out


def markdown(result):
    rows = result["rows"]
    lines = ["| family (weights) | mode | backend | min / mean cosine to float | zero-shot top-1 (float; chance) "
             "| argmax agreement | greedy tokens equal (prefix kept) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("section") != "accuracy":
            continue
        cos = "; ".join(f"{k.replace('_embeddings', '')} {v['min_cos']:.4f} / {v['mean_cos']:.4f}"
                        + ("" if v["finite"] else " NON-FINITE") for k, v in r["outputs"].items())
        zero = (f"{r['zero_shot']:.1%} ({r['zero_shot_float']:.1%}; {r['chance']:.1%})"
                if "zero_shot" in r else "")
        agree = f"{r['argmax_agreement']:.1%}" if "argmax_agreement" in r else ""
        gen = (f"{r['generate']['token_match']:.1%} ({r['generate']['prefix']:.1%})" if "generate" in r else "")
        weights = r["weights"]
        if "float_logits" in r and r["mode"] == "float32":
            weights += (f"; float argmax = input token at {r['float_logits']['copies_input_token']:.0%}, "
                        f"top-2 margin {r['float_logits']['median_top2_margin_sd']:.2f} sd")
        lines.append(f"| {r['family']} ({weights}) | {r['mode']} | {r['backend']} | {cos} | {zero} | "
                     f"{agree} | {gen} |")
    lines += ["", "| tower | backend | mode | ms | x float speed | weight MiB | x float memory | min cosine "
              "| peer ms (HF float32 / qint8) | peer / ours |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in speed_ratios(rows):
        peer = "" if s["mode"] == "hf qint8" else f"{s['peer_ms']:.0f}"
        ratio = "" if s["mode"] == "hf qint8" else f"**{s['peer_over_ours']:.2f}**"
        lines.append(f"| {s['tower']} | {s['backend']} | {s['mode']} | {s['ms']:.0f} | {s['speedup_vs_float']:.2f}x | "
                     f"{s['weight_bytes'] / 2**20:.0f} | {s['memory_vs_float']:.2f}x | {s['min_cos']:.4f} | {peer} | "
                     f"{ratio} |")
    return "\n".join(lines)


def chart(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ratios = speed_ratios(result["rows"])
    accuracy = [r for r in result["rows"] if r.get("section") == "accuracy" and r["family"] == "siglip2_fixed"]
    if not ratios and not accuracy:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    groups = sorted({(r["backend"], r["tower"]) for r in ratios})
    names = list(MODES[1:]) + ["hf qint8"]
    colors = {"int8": "#1f77b4", "int4": "#ff7f0e", "float8": "#9467bd", "hf qint8": "#7f7f7f"}
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [next((r["speedup_vs_float"] for r in ratios if (r["backend"], r["tower"], r["mode"]) == (*g, name)),
                       np.nan) for g in groups]
        x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        left.bar(x, values, width, label=name, color=colors[name])
        for xi, value in zip(x, values):
            if np.isfinite(value):
                left.text(xi, value, f"{value:.2f}", ha="center", va="bottom", fontsize=6)
    left.axhline(1.0, color="black", linewidth=1)
    left.set_xticks(np.arange(len(groups)))
    left.set_xticklabels([f"{b}\n{t}" for b, t in groups], fontsize=8)
    left.set_ylabel("float32 time / mode time (> 1: faster than float)")
    left.set_title(f"{result['config']} towers, batch {result['batch']}: speed vs each one's float32", fontsize=9)
    left.legend(fontsize=8)
    backends_ = sorted({r["backend"] for r in accuracy})
    for i, backend in enumerate(backends_):
        values = [next((r["zero_shot"] for r in accuracy if r["backend"] == backend and r["mode"] == m), np.nan)
                  for m in MODES]
        right.bar(np.arange(len(MODES)) + (i - (len(backends_) - 1) / 2) * 0.8 / len(backends_), values,
                  0.8 / len(backends_), label=backend)
    if accuracy:
        right.axhline(accuracy[0]["chance"], color="red", linewidth=1, linestyle="--", label="chance")
    right.set_xticks(np.arange(len(MODES)))
    right.set_xticklabels(MODES, fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("zero-shot top-1")
    right.set_title(f"shipped {PRESET}, {result['images']} held-out images", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    backends = worker.backend_list(args.backends)
    start = time.perf_counter()
    rows, walls, busy = [], {}, {}
    for backend in backends:
        if args.wait_idle:
            runner._wait_idle(args.wait_idle)
        backend_rows, walls[backend], busy[backend] = run_backend(backend, args)
        rows += backend_rows
    result = {
        "benchmark": "quantization",
        "command": "python -m benchmarks.quantization " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config, "batch": args.batch, "images": args.images, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "warmup": args.warmup, "torch_threads": args.torch_threads,
        "pali_gemma_config": PALI_GEMMA, "modes": MODES,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.perf_counter() - start, "backend_wall_s": walls,
        "busy_processes": busy, "rows": rows,
        "speed_ratios": speed_ratios(rows),
    }
    print(markdown(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if not args.no_plot:
        png = chart(result, os.path.splitext(args.out)[0] + ".png")
        if png:
            print(f"wrote {png}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
