"""The price of the SigLIP 2 recipe: train-step time and memory vs the plain sigmoid step.

    python -m benchmarks.recipe_step                     # B/16 towers at 224 px, batch 16
    python -m benchmarks.recipe_step --config S16        # S/16 at 128 px (what RESULTS.md shows on CPU)
    KERAS_BACKEND=torch python -m benchmarks.recipe_step --config tiny --steps 3

Three steps on the same backend, each in its own process (so peak memory is
its own): `plain` (`SigLIPBackbone.fit` step, sigmoid loss), `stage A`
(`SigLIP2Pretrainer`: sigmoid + LocCa decoder) and `stage B` (plus the EMA
teacher, 8 local views at half resolution, masked prediction), and `stage D`
(`ActiveCurationTrainer`: a same-size frozen reference and the learner score a
super-batch of twice the batch, half is selected jointly and trained on;
`stage D cached`: the reference's embeddings come with the data). Reports the
median step time (after compiling) and the process's peak resident memory,
and each as a ratio to `plain`. Writes `recipe_step.json`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    # name: (vision variant, text variant, image size, text length, batch)
    "B16": ("B/16", "B", 224, 64, 16),
    "S16": ("S/16", "S", 128, 32, 16),
    "tiny": ("mu/16", "mu", 64, 16, 8),
}
# The paper's DINO heads (65,536 prototypes) for real sizes; small ones for the smoke test.
MODES = ("plain", "stage_a", "stage_b", "stage_d", "stage_d_cached")
HEADS = {"tiny": dict(num_prototypes=1024, head_hidden_dim=128, head_bottleneck_dim=64)}


def _one(mode, config, steps, local_views):
    import numpy as np
    from keras import ops

    import keras_siglip as ks
    from keras_siglip.presets.variants import decode_variant

    vision, text, size, length, batch = CONFIGS[config]
    vocabulary = 500 if config == "tiny" else 32_000
    image = decode_variant(vision)
    words = decode_variant(text)

    def two_towers():
        return ks.models.SigLIPBackbone(
            ks.models.SigLIPVisionEncoder(**image, image_size=size),
            ks.models.SigLIPTextEncoder(**words, vocabulary_size=vocabulary, sequence_length=length,
                                        num_classes=image["width"]),
        )

    backbone = two_towers()
    rng = np.random.default_rng(0)
    examples = 2 * batch if mode.startswith("stage_d") else batch  # stage D: a super-batch
    x = {"images": rng.uniform(-1, 1, (examples, size, size, 3)).astype("float32"),
         "token_ids": rng.integers(2, vocabulary, (examples, length)).astype("int32")}
    if mode.startswith("stage_d"):
        reference = two_towers()
        model = ks.models.ActiveCurationTrainer(backbone, reference, filter_ratio=0.5, num_chunks=4, seed=0)
        if mode == "stage_d_cached":
            x["reference_image_embeddings"] = ops.convert_to_numpy(reference.encode_images(x["images"]))
            x["reference_text_embeddings"] = ops.convert_to_numpy(reference.encode_texts(x["token_ids"]))
    elif mode == "plain":
        model = backbone
        model.compile(optimizer=ks.optimizers.SigLIPAdamW())
    else:
        model = ks.models.SigLIP2Pretrainer(backbone, total_steps=100, size_factor=0.25, seed=0,
                                            **HEADS.get(config, {}))
        x.update(decoder_token_ids=x["token_ids"], decoder_targets=x["token_ids"],
                 tasks=(np.arange(batch) % 3).astype("int32"))
        if mode == "stage_b":
            x["global_view"] = x["images"]
            x["local_views"] = rng.uniform(-1, 1, (batch, local_views, size // 2, size // 2, 3)).astype("float32")
            model.start_distillation()
    start = time.perf_counter()
    model.train_on_batch(x)  # compiles
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x)
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "step_ms": 1000 * float(np.median(times)), "compile_s": compile_seconds,
            "peak_rss_mib": peak_mib, "weights": model.count_params()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="B16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--local-views", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(HERE, "recipe_step.json"))
    parser.add_argument("--same-process", action="store_true",
                        help="run every stage in this process (no import per stage; peak memory accumulates)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_one(args.worker, args.config, args.steps, args.local_views)))
        return 0
    import keras

    backend = keras.backend.backend()
    rows = []
    print(f"{backend}, {args.config} (batch {CONFIGS[args.config][4]}), median of {args.steps} steps:", flush=True)
    for mode in MODES:
        if args.same_process:
            row = _one(mode, args.config, args.steps, args.local_views)
        else:
            run = subprocess.run(
                [sys.executable, "-m", "benchmarks.recipe_step", "--worker", mode, "--config", args.config,
                 "--steps", str(args.steps), "--local-views", str(args.local_views)],
                capture_output=True, text=True, cwd=os.path.dirname(HERE),
            )
            if run.returncode:
                raise SystemExit(f"{mode} failed:\n{run.stderr[-3000:]}")
            row = json.loads(run.stdout.strip().splitlines()[-1])
        rows.append(row)
        plain = rows[0]
        print(f"  {mode:14s} {row['step_ms']:9.1f} ms/step ({row['step_ms'] / plain['step_ms']:.2f}x plain)  "
              f"peak {row['peak_rss_mib']:7.0f} MiB ({row['peak_rss_mib'] / plain['peak_rss_mib']:.2f}x)  "
              f"compile {row['compile_s']:.0f}s  {row['weights']:,} weights", flush=True)
    result = {"backend": backend, "config": args.config, "steps": args.steps, "local_views": args.local_views,
              "same_process": args.same_process, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
