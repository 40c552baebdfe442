"""Where does the time go? Sub-part timings of the image / text towers, ours vs peers.

    python -m benchmarks.profile --backend jax --tower image --config B/16 --batch 8
    python -m benchmarks.profile --backend torch --tower text --config tiny --torch-profiler

Times, for each implementation with the same weights, the parts of a tower in the
backend's benchmark mode (see `backends.py`): the embedding (patch
embedding + positions / token + position embedding), the encoder (all blocks +
final LayerNorm), one encoder block, and the pooling head. `--torch-profiler`
(torch backend) also prints torch.profiler's op table of each full forward, which
shows per-op dispatch overhead and the attention kernels each implementation uses.
HF parts are timed with torch eager in every backend's process.
"""

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", required=True, choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--tower", default="image", choices=("image", "text"))
    parser.add_argument("--config", default="B/16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peers", default="keras-hub,hf")
    parser.add_argument("--torch-profiler", action="store_true")
    return parser.parse_args(argv)


def _time(run, repeats):
    run()
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    from benchmarks import backends, models

    class Part(keras.Model):
        """A sub-computation of a model as a Keras model (so it runs in benchmark mode)."""

        def __init__(self, fn, layers):
            super().__init__()
            self.fn = fn
            self.parts = list(layers)
            self.built = True  # the wrapped layers are built already

        def call(self, x, training=False):
            return self.fn(x)

    peers = [p for p in args.peers.split(",") if p]
    config = models.CONFIGS[args.config]
    trio = models.build_trio(args.config, with_keras_hub="keras-hub" in peers, with_hf="hf" in peers)
    rng = np.random.default_rng(0)
    parts = {}  # impl -> [(part name, run)]
    if args.tower == "image":
        v = config["vision_encoder"]
        size, patch = v["image_size"], v["patch_size"]
        x = rng.uniform(-1, 1, (args.batch, size, size, 3)).astype("float32")
        tokens = rng.normal(size=(args.batch, (size // patch) ** 2, v["width"])).astype("float32")
        vit = trio["ours"].vision_encoder.vit
        grid = (size // patch, size // patch)
        ours = [
            ("embedding", Part(lambda i: vit.position_embedding(vit.embed_images(i)[0], grid_size=grid),
                               [vit.embedding, vit.position_embedding]), x),
            ("encoder", Part(vit.encoder, [vit.encoder]), tokens),
            ("one block", Part(vit.encoder.blocks[0], [vit.encoder.blocks[0]]), tokens),
            ("MAP head", Part(vit.map_head, [vit.map_head]), tokens),
            ("full", trio["ours"].vision_encoder, x),
        ]
        parts["ours"] = [(n, backends.keras_forward(m, i)[0]) for n, m, i in ours]
        if "keras-hub" in trio:
            kh = trio["keras-hub"].vision_encoder

            def kh_encoder(t):
                for block in kh.encoder_layers:
                    t = block(t)
                return kh.post_layer_norm(t)

            khp = [
                ("embedding", Part(kh.embedding, [kh.embedding]), x),
                ("encoder", Part(kh_encoder, kh.encoder_layers + [kh.post_layer_norm]), tokens),
                ("one block", Part(kh.encoder_layers[0], [kh.encoder_layers[0]]), tokens),
                ("MAP head", Part(kh.head, [kh.head]), tokens),
                ("full", kh, {"images": x}),
            ]
            parts["keras-hub"] = [(n, backends.keras_forward(m, i)[0]) for n, m, i in khp]
    else:
        t = config["text_encoder"]
        ids = rng.integers(2, t["vocabulary_size"], (args.batch, t["sequence_length"])).astype("int32")
        tokens = rng.normal(size=(args.batch, t["sequence_length"], t["width"])).astype("float32")
        tt = trio["ours"].text_encoder.transformer
        ours = [
            ("embedding", Part(lambda i: tt.token_embedding(i) + tt.position_embedding[None],
                               [tt]), ids),
            ("encoder", Part(tt.encoder, [tt.encoder]), tokens),
            ("one block", Part(tt.encoder.blocks[0], [tt.encoder.blocks[0]]), tokens),
            ("full", trio["ours"].text_encoder, ids),
        ]
        parts["ours"] = [(n, backends.keras_forward(m, i)[0]) for n, m, i in ours]
        if "keras-hub" in trio:
            kh = trio["keras-hub"].text_encoder

            def kh_encoder(x):
                for block in kh.encoder_layers:
                    x = block(x)
                return kh.post_layer_norm(x)

            khp = [
                ("embedding", Part(kh.embedding, [kh.embedding]), ids),
                ("encoder", Part(kh_encoder, kh.encoder_layers + [kh.post_layer_norm]), tokens),
                ("one block", Part(kh.encoder_layers[0], [kh.encoder_layers[0]]), tokens),
                ("full", kh, {"token_ids": ids}),
            ]
            parts["keras-hub"] = [(n, backends.keras_forward(m, i)[0]) for n, m, i in khp]
    if "hf" in trio:
        import torch

        hf = trio["hf"]
        tk = torch.from_numpy(tokens)

        def nograd(fn):
            def run():
                with torch.no_grad():
                    return fn()
            return run

        if args.tower == "image":
            vm = hf.vision_model
            px = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            parts["hf"] = [
                ("embedding", nograd(lambda: vm.embeddings(px))),
                ("encoder", nograd(lambda: vm.post_layernorm(vm.encoder(inputs_embeds=tk).last_hidden_state))),
                ("one block", nograd(lambda: vm.encoder.layers[0](tk, None))),
                ("MAP head", nograd(lambda: vm.head(tk))),
                ("full", nograd(lambda: vm(pixel_values=px).pooler_output)),
            ]
        else:
            tm = hf.text_model
            ti = torch.from_numpy(ids.astype("int64"))
            parts["hf"] = [
                ("embedding", nograd(lambda: tm.embeddings(input_ids=ti))),
                ("encoder", nograd(lambda: tm.final_layer_norm(tm.encoder(inputs_embeds=tk).last_hidden_state))),
                ("one block", nograd(lambda: tm.encoder.layers[0](tk, None))),
                ("full", nograd(lambda: tm(input_ids=ti).pooler_output)),
            ]
    names = [n for n, _ in parts["ours"]]
    print(f"{args.tower} tower, {args.config}, batch {args.batch}, backend {args.backend}: median ms")
    print(f"{'part':12s}" + "".join(f"{impl:>14s}" for impl in parts))
    for i, name in enumerate(names):
        cells = []
        for impl, runs in parts.items():
            run = dict(runs).get(name)
            cells.append(f"{_time(run, args.repeats):14.2f}" if run else f"{'-':>14s}")
        print(f"{name:12s}" + "".join(cells), flush=True)
    if args.torch_profiler and args.backend == "torch":
        from torch.profiler import ProfilerActivity, profile

        for impl, runs in parts.items():
            run = dict(runs)["full"]
            run()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            events = prof.key_averages()
            print(f"\n== {impl}: {sum(e.count for e in events)} profiled ops")
            print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
