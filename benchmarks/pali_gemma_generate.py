"""PaliGemma greedy generation, tokens/s: keras_siglip vs keras-hub and HF transformers on the same weights.

    python -m benchmarks.pali_gemma_generate                      # jax, tensorflow, torch
    python -m benchmarks.pali_gemma_generate --backends jax --batches 1 --repeats 3
    python -m benchmarks.pali_gemma_generate --config tiny --new-tokens 4 --out /tmp/pg.json
    python -m benchmarks.pali_gemma_generate --torch-threads 1   # on a busy shared machine

One random keras-hub `PaliGemmaBackbone` per backend, converted to ours with
`keras_siglip.convert.keras_hub_pali_gemma` (identical weights); the token
embedding row of EOS is zeroed in both so that no row stops early and every call
generates exactly `--new-tokens` tokens. Both sides run their public `generate`
on token ids (no tokenizer): ours `PaliGemmaCausalLM.generate(images,
token_ids=..., max_new_tokens=G)` (one prefill, then a KV-cached keras-hub
`GreedySampler` loop), keras-hub's `PaliGemmaCausalLM.generate({...},
stop_token_ids=None)` with the prompt padded by G slots. Each backend compiles as
it normally does: jax `jax.jit`, tensorflow `tf.function(jit_compile=True)`,
torch eager under `no_grad` (both sides alike).

The first call (trace + compile) is timed separately and excluded; then the two
implementations are timed interleaved (`timing.measure_interleaved`), median of
`--repeats` calls. Before timing, the generated ids must agree (`agree`).
Each backend runs in its own subprocess, one after the other; rows stream as
`@@ROW <json>` lines. Writes `pali_gemma_generate.json` and `.png` beside this
file (or `--out`).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import worker
from benchmarks.worker import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROW_PREFIX = "@@ROW "
LOG_PREFIX = "@@LOG "
EOS_ID = 1

# keras-hub `PaliGemmaBackbone` kwargs (keras-hub's intermediate_dim is twice the GeGLU width).
CONFIGS = {
    # The smoke-test size: seconds per backend.
    "tiny": dict(vocabulary_size=64, image_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                 hidden_dim=32, intermediate_dim=64, head_dim=16, vit_patch_size=8, vit_num_heads=2,
                 vit_hidden_dim=16, vit_num_layers=1, vit_intermediate_dim=32),
    # ViT 2 x 64 at 32 px / patch 8 (16 image tokens); Gemma 4 x 256, 4 query heads,
    # 1 key/value head (Gemma 2B's multi-query layout), GeGLU 512, vocabulary 1024.
    "small": dict(vocabulary_size=1024, image_size=32, num_layers=4, num_query_heads=4, num_key_value_heads=1,
                  hidden_dim=256, intermediate_dim=1024, head_dim=64, vit_patch_size=8, vit_num_heads=2,
                  vit_hidden_dim=64, vit_num_layers=2, vit_intermediate_dim=128),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pali_gemma_generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all three)")
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compile) call")
    parser.add_argument("--out", default=os.path.join(HERE, "pali_gemma_generate.json"),
                        help="the JSON written; the chart goes beside it as .png")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the torch worker (default: torch's own). On a machine "
                             "shared with other busy processes, torch's spinning intra-op threads can slow every "
                             "op by 10x or more; 1 avoids that")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- worker (one backend per process) --------------------------------------------------


def _log(text):
    print(LOG_PREFIX + text, flush=True)


def _models(config_name):
    import keras
    import keras_hub
    import numpy as np
    from keras import ops

    from keras_siglip.convert.keras_hub_pali_gemma import load_keras_hub_pali_gemma
    from keras_siglip.models import PaliGemmaCausalLM

    keras.utils.set_random_seed(0)
    theirs = keras_hub.models.PaliGemmaBackbone(**CONFIGS[config_name])
    table = np.array(ops.convert_to_numpy(theirs.token_embedding.embeddings))
    table[EOS_ID] = 0.0  # EOS gets logit 0 among random ones: never the argmax, no early stop
    theirs.token_embedding.embeddings.assign(table)
    ours = load_keras_hub_pali_gemma(theirs)
    reference = keras_hub.models.PaliGemmaCausalLM(backbone=theirs, preprocessor=None)
    reference.compile(sampler="greedy")
    return PaliGemmaCausalLM(ours, preprocessor=None), reference


def _hf_model(ours, folder):
    """Our model exported with `convert.export_huggingface` and loaded by
    transformers (float32, eval), or None without torch / transformers."""
    import importlib.util

    if not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")):
        return None
    import transformers

    from keras_siglip import convert

    ours.backbone.save_to_preset(os.path.join(folder, "preset"))
    convert.export_huggingface(os.path.join(folder, "preset"), os.path.join(folder, "hf"))
    model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(os.path.join(folder, "hf"))
    return model.float().eval()


def _mode(backend):
    return {"jax": "jax.jit", "tensorflow": "tf.function(jit_compile=True)", "torch": "torch eager, no_grad"}[backend]


def run_worker(args):
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    if keras.config.backend() != args.backend:
        raise SystemExit(f"KERAS_BACKEND={args.backend} but keras runs {keras.config.backend()}")
    from benchmarks import timing

    threads = None
    if args.backend == "torch":
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        threads = torch.get_num_threads()
    start = time.perf_counter()
    ours, reference = _models(args.config)
    config = CONFIGS[args.config]
    image_tokens = (config["image_size"] // config["vit_patch_size"]) ** 2
    _log(f"[{args.backend}] built keras-hub {args.config} PaliGemma and converted it in "
         f"{time.perf_counter() - start:.1f} s")
    hf_folder = tempfile.mkdtemp(prefix="keras_siglip_pg_hf_")
    try:
        hf = _hf_model(ours, hf_folder)
    finally:
        shutil.rmtree(hf_folder, ignore_errors=True)
    if hf is not None:
        import torch

        _log(f"[{args.backend}] exported it to transformers' PaliGemmaForConditionalGeneration")
    new, prompt = args.new_tokens, args.prompt_length
    for batch in [int(b) for b in args.batches.split(",")]:
        rng = np.random.default_rng(batch)
        images = rng.uniform(-1, 1, (batch, config["image_size"], config["image_size"], 3)).astype("float32")
        prompt_ids = rng.integers(2, config["vocabulary_size"], (batch, prompt)).astype("int32")
        padded = np.concatenate([prompt_ids, np.zeros((batch, new), "int32")], axis=1)
        mask = np.concatenate([np.ones((batch, prompt), bool), np.zeros((batch, new), bool)], axis=1)
        kh_inputs = {"images": images, "token_ids": padded, "padding_mask": mask}

        def run_ours():
            return ours.generate(images, token_ids=prompt_ids, max_new_tokens=new)

        def run_keras_hub():
            return np.asarray(reference.generate(kh_inputs, stop_token_ids=None)["token_ids"])[:, prompt:]

        runs = {"ours": run_ours, "keras-hub": run_keras_hub}
        if hf is not None:
            image_ids = np.full((batch, image_tokens), hf.config.image_token_index, "int64")
            input_ids = torch.from_numpy(np.concatenate([image_ids, prompt_ids], axis=1).astype("int64"))
            hf_inputs = dict(input_ids=input_ids, pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                             attention_mask=torch.ones_like(input_ids), token_type_ids=torch.zeros_like(input_ids))

            def run_hf():
                with torch.no_grad():
                    out = hf.generate(**hf_inputs, do_sample=False, max_new_tokens=new, min_new_tokens=new)
                return out.numpy()[:, input_ids.shape[1]:]

            runs["hf"] = run_hf

        row = {"case": "pali_gemma_generate", "config": args.config, "backend": args.backend, "batch": batch,
               "new_tokens": new, "prompt_length": prompt, "image_tokens": image_tokens,
               "vocabulary_size": config["vocabulary_size"], "unit": "tokens/s"}
        if threads is not None:
            row["torch_threads"] = threads
        outputs = {}
        for name, run in runs.items():
            _log(f"[{args.backend}] b={batch}: first call (trace + compile) of {name} ...")
            seconds, out = timing.first_call(run)
            outputs[name] = np.asarray(out)
            mode = "transformers generate, torch eager, no_grad" if name == "hf" else _mode(args.backend)
            row[name] = {"mode": mode, "first_call_s": seconds}
            _log(f"[{args.backend}] b={batch}: {name} first call {seconds:.1f} s")

        def same(peer):
            return bool(outputs["ours"].shape == outputs[peer].shape and np.array_equal(outputs["ours"], outputs[peer]))

        row["agree"] = same("keras-hub")
        if hf is not None:
            row["agree_hf"] = same("hf")
        _log(f"[{args.backend}] b={batch}: generated ids agree with keras-hub: {row['agree']}, with HF: "
             f"{row.get('agree_hf', 'not run')}; timing {args.repeats} calls each (interleaved) ...")
        summaries = timing.measure_interleaved(runs, warmup=args.warmup, repeats=args.repeats)
        for name, summary in summaries.items():
            row[name].update(summary)
            row[name]["tokens_per_s"] = batch * new / (summary["median_ms"] / 1e3)
        row["ratio"] = row["ours"]["tokens_per_s"] / row["keras-hub"]["tokens_per_s"]
        if hf is not None:
            row["ratio_hf"] = row["ours"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
        print(ROW_PREFIX + json.dumps(row), flush=True)
    return 0


# --- parent: one subprocess per backend, then the table, JSON and chart ---------------


def _summary(row):
    if "error" in row:
        return f"[{row['backend']}] FAILED: {row['error']}"
    hf = (f", HF {row['hf']['tokens_per_s']:.0f} tokens/s: x{row['ratio_hf']:.2f}"
          f"{'' if row['agree_hf'] else ' (OUTPUTS DISAGREE)'}") if "hf" in row else ""
    return (f"[{row['backend']}] b={row['batch']}: ours {row['ours']['tokens_per_s']:.0f} tokens/s "
            f"({row['ours']['median_ms']:.1f} ms), keras-hub {row['keras-hub']['tokens_per_s']:.0f} tokens/s "
            f"({row['keras-hub']['median_ms']:.1f} ms): x{row['ratio']:.2f}"
            f"{'' if row['agree'] else '  OUTPUTS DISAGREE'}{hf}")


def run_backend(backend, args):
    cmd = [sys.executable, "-m", "benchmarks.pali_gemma_generate", "--worker", "--backend", backend,
           "--config", args.config, "--batches", args.batches, "--new-tokens", str(args.new_tokens),
           "--prompt-length", str(args.prompt_length), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"=== {backend}", flush=True)
    rows, start = [], time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(ROW_PREFIX):
            rows.append(json.loads(line[len(ROW_PREFIX):]))
            print("  " + _summary(rows[-1]), flush=True)
        elif line.startswith(LOG_PREFIX):
            print("  " + line[len(LOG_PREFIX):].rstrip(), flush=True)
    stderr = proc.stderr.read()
    if proc.wait():
        rows.append({"case": "pali_gemma_generate", "backend": backend,
                     "error": f"worker exited with {proc.returncode}: {stderr[-2000:]}"})
        print("  " + _summary(rows[-1]), flush=True)
    print(f"=== {backend} done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def table(rows):
    lines = ["| backend | batch | ours tokens/s | keras-hub tokens/s | ours / keras-hub | HF tokens/s | ours / HF "
             "| first call ours / keras-hub (s) | ids agree (keras-hub, HF) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | - | failed | | | | | | |")
            continue
        hf = (f"{r['hf']['tokens_per_s']:.0f} | **{r['ratio_hf']:.2f}x**" if "hf" in r else "not run | -")
        lines.append(f"| {r['backend']} | {r['batch']} | {r['ours']['tokens_per_s']:.0f} | "
                     f"{r['keras-hub']['tokens_per_s']:.0f} | **{r['ratio']:.2f}x** | {hf} | "
                     f"{r['ours']['first_call_s']:.1f} / {r['keras-hub']['first_call_s']:.1f} | "
                     f"{r['agree']}, {r.get('agree_hf', '-')} |")
    return "\n".join(lines)


def chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    if not rows:
        return None
    labels = [f"{r['backend']} b{r['batch']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=["#2ca02c" if r >= 1 else "#d62728" for r in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    for yi, r, row in zip(y, ratios, rows):
        ax.text(r, yi, f" {r:.2f}x ({row['ours']['tokens_per_s']:.0f} vs {row['keras-hub']['tokens_per_s']:.0f} tok/s)",
                va="center", fontsize=7)
    ax.set_xlim(0, max(ratios + [1.0]) * 1.6)
    ax.set_xlabel("keras_siglip tokens/s / keras-hub tokens/s (> 1: keras_siglip faster)")
    ax.set_title(title, fontsize=9)
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
    rows = []
    for backend in backends:
        rows += run_backend(backend, args)
    result = {
        "benchmark": "pali_gemma_generate",
        "command": "python -m benchmarks.pali_gemma_generate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config, "keras_hub_config": CONFIGS[args.config],
        "new_tokens": args.new_tokens, "prompt_length": args.prompt_length, "repeats": args.repeats,
        "torch_threads": args.torch_threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.perf_counter() - start, "rows": rows,
    }
    print(table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if not args.no_plot:
        png = chart(rows, os.path.splitext(args.out)[0] + ".png",
                    f"PaliGemma greedy generate, {args.config} config, {args.new_tokens} new tokens "
                    f"({result['machine']})")
        if png:
            print(f"wrote {png}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
