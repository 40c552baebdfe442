"""The benchmark rows. Each `@case` function runs inside one backend's worker.

Adding a row: write

    @case("my_row", configs=("tiny", "B/16"), description="...")
    def my_row(ctx, config_name):
        ...build / fetch models (ctx.models(config_name) gives ours, keras-hub, HF
           with identical weights)...
        return ctx.compare(
            "my_row", config_name, batch,
            {"ours": (run, mode), "keras-hub": (run, mode), "hf": (run, mode)},
            outputs=lambda out: out,   # optional: pick the array to compare
            unit="ms", extra={...},
        )

`ctx.compare` checks that every peer's output agrees with ours, times each
implementation (warm-up excluded, median of repeats) and emits one row; the
parent process turns rows into the table, JSON and chart without further
changes. Rows that measure something else (memory, tokens/s) can build the row
dict themselves: `{"case", "config", "backend", "batch", "ours": {"value", ...},
"peers": {name: {"value", "agree", ...}}, "unit", "lower_is_better"}` and pass
it to `ctx.emit`.
"""

import numpy as np

from benchmarks import backends, models, timing

CASES = {}

PEER_LABELS = {"ours": "keras_siglip", "keras-hub": "keras-hub", "hf": "HF transformers (torch)"}

# (full, quick, gpu) batch sizes.
BATCH = {
    ("image_encoder", "tiny"): (32, 32, 256),
    ("image_encoder", "B/16"): (8, 2, 64),
    ("text_encoder", "tiny"): (32, 32, 256),
    ("text_encoder", "B/16"): (32, 2, 256),
    ("fit_step", "tiny"): (32, 32, 256),
    ("fit_step", "w256-d4"): (32, 32, 256),
    ("naflex_forward", "tiny"): (32, 32, 256),
    ("naflex_forward", "B/16"): (32, 8, 256),
}


class Case:
    def __init__(self, name, fn, configs, quick_configs, description):
        self.name = name
        self.fn = fn
        self.configs = tuple(configs)
        self.quick_configs = tuple(quick_configs if quick_configs is not None else configs)
        self.description = description


def case(name, configs=(None,), quick_configs=None, description=""):
    """Register a row: `fn(ctx, config_name)` returns a row dict or a list of them."""

    def register(fn):
        CASES[name] = Case(name, fn, configs, quick_configs, description)
        return fn

    return register


class Context:
    """What a case needs: settings, the model cache, measuring and emitting rows."""

    def __init__(self, backend, quick=False, peers=("keras-hub", "hf"), repeats=None,
                 warmup=None, emit=print, log=print):
        self.backend = backend
        self.quick = quick
        self.peers = tuple(peers)
        self.device = backends.device_kind()
        self._repeats = repeats
        self._warmup = warmup
        self.emit = emit
        self.log = log
        self._models = {}
        self.rng = np.random.default_rng(0)

    # -- settings ---------------------------------------------------------
    def batch(self, case_name, config_name):
        full, quick, gpu = BATCH[(case_name, config_name)]
        if self.device == "gpu":
            return gpu
        return quick if self.quick else full

    def repeats(self, config_name, case_name=None):
        if self._repeats is not None:
            return self._repeats
        if config_name == "tiny":
            return 6 if self.quick else 30
        if case_name == "fit_step" and not self.quick:
            return 24  # a step's time varies by +-10% on XLA CPU; 9 samples misled
        if case_name == "naflex_forward" and not self.quick:
            return 5  # ~5 s a call on 2 CPU cores
        return 3 if self.quick else 9

    def rounds(self, config_name):
        """Interleaved blocks of timed calls (see `timing.measure_interleaved`)."""
        return 1 if self._repeats is not None and self._repeats < 3 else 3

    def warmup(self, config_name):
        """Untimed calls after the first (compiling) call."""
        if self._warmup is not None:
            return self._warmup
        return 1 if (self.quick or config_name != "tiny") else 3

    # -- models -----------------------------------------------------------
    def naflex_models(self, config_name):
        """Our NaFlex backbone and HF's Siglip2Model with one set of weights."""
        key = "naflex " + config_name
        if key not in self._models:
            self.log(f"building {config_name} NaFlex models (ours, hf)")
            pair = models.build_naflex_pair(config_name)
            pair["hf"].to(backends.torch_device())
            self._models[key] = pair
        return self._models[key]

    def models(self, config_name):
        """Ours / keras-hub / HF with one set of weights, built once per worker."""
        if config_name not in self._models:  # kept: B/16 x 3 implementations is ~2.5 GB
            self.log(f"building {config_name} models ({', '.join(('ours',) + self.peers)})")
            trio = models.build_trio(
                config_name, with_keras_hub="keras-hub" in self.peers, with_hf="hf" in self.peers
            )
            if "hf" in trio:
                trio["hf"].to(backends.torch_device())
            self._models[config_name] = trio
        return self._models[config_name]

    # -- measuring --------------------------------------------------------
    def compare(self, case_name, config_name, batch, runs, outputs=None, unit="ms", extra=None,
                tolerance=1e-4):
        """Check agreement with ours, time each implementation, emit the row."""
        outputs = outputs or (lambda out: out)
        results = {}
        reference = None
        for name, (run, mode) in runs.items():
            compile_s, out = timing.first_call(run)
            value = backends.to_numpy(outputs(out))
            entry = {"label": PEER_LABELS.get(name, name), "mode": backends.mode_name(mode),
                     "first_call_s": compile_s}
            if name == "ours":
                reference = value
            else:
                entry.update(timing.agreement(reference, value, tolerance))
            results[name] = entry
        timings = timing.measure_interleaved(
            {name: run for name, (run, _) in runs.items()},
            self.warmup(config_name), self.repeats(config_name), self.rounds(config_name),
        )
        for name, summary in timings.items():
            results[name].update(summary, value=summary["median_ms"])
        row = {
            "case": case_name,
            "config": config_name,
            "backend": self.backend,
            "device": self.device,
            "batch": batch,
            "unit": unit,
            "lower_is_better": True,
            "ours": results.pop("ours"),
            "peers": results,
            **(extra or {}),
        }
        self.emit(row)
        return row


# ---------------------------------------------------------------------------
# Rows


def _loss(logs):
    """The loss from `train_on_batch`'s return value (a scalar or [loss, metrics...])."""
    return float(np.ravel(np.asarray(logs, dtype="float64"))[0])


@case("matmul_peak", description="compiled float32 matmul (2048^2 CPU, 8192^2 GPU): the machine's limit")
def matmul_peak(ctx, _config):
    n = 8192 if ctx.device == "gpu" else 2048  # 2048 saturates 2 CPU cores, not a GPU
    run, mode = backends.matmul_fn(n)
    compile_s, _ = timing.first_call(run)
    result = timing.measure(run, 2, 5 if ctx.quick else 10)
    flops = 2 * n**3
    row = {
        "case": "matmul_peak",
        "config": f"{n}x{n} float32",
        "backend": ctx.backend,
        "device": ctx.device,
        "mode": mode,
        "flops": flops,
        "first_call_s": compile_s,
        "gflops_median": flops / result["median_ms"] / 1e6,
        "gflops_best": flops / result["min_ms"] / 1e6,
        **result,
    }
    ctx.emit(row)
    return row


@case("image_encoder", configs=("tiny", "B/16"),
      description="image tower forward (patchify ... MAP head), pooled output compared")
def image_encoder(ctx, config_name):
    trio = ctx.models(config_name)
    config = models.CONFIGS[config_name]
    size = config["vision_encoder"]["image_size"]
    batch = ctx.batch("image_encoder", config_name)
    images = ctx.rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    runs = {"ours": backends.keras_forward(trio["ours"].vision_encoder, images)}
    if "keras-hub" in trio:
        runs["keras-hub"] = backends.keras_forward(trio["keras-hub"].vision_encoder, {"images": images})
    if "hf" in trio:
        runs["hf"] = backends.hf_image_forward(trio["hf"], images)
    flops = models.image_forward_flops(config, batch)
    return ctx.compare("image_encoder", config_name, batch, runs, extra={"flops": flops})


@case("text_encoder", configs=("tiny", "B/16"),
      description="text tower forward (embedding ... last-token head), output compared")
def text_encoder(ctx, config_name):
    trio = ctx.models(config_name)
    config = models.CONFIGS[config_name]
    t = config["text_encoder"]
    batch = ctx.batch("text_encoder", config_name)
    token_ids = ctx.rng.integers(2, t["vocabulary_size"], (batch, t["sequence_length"])).astype("int32")
    token_ids[:, -1] = 1  # EOS at the pooled (last) position, as the preprocessor packs it
    runs = {"ours": backends.keras_forward(trio["ours"].text_encoder, token_ids)}
    if "keras-hub" in trio:
        runs["keras-hub"] = backends.keras_forward(trio["keras-hub"].text_encoder, {"token_ids": token_ids})
    if "hf" in trio:
        runs["hf"] = backends.hf_text_forward(trio["hf"], token_ids)
    flops = models.text_forward_flops(config, batch)
    return ctx.compare("text_encoder", config_name, batch, runs, extra={"flops": flops})


@case("fit_step", configs=("w256-d4",), quick_configs=("tiny",),
      description="one `train_on_batch` of the two-tower model, Adam(1e-4), each model's default loss")
def fit_step(ctx, config_name):
    import keras

    config = models.CONFIGS[config_name]
    batch = ctx.batch("fit_step", config_name)
    size = config["vision_encoder"]["image_size"]
    t = config["text_encoder"]
    x = {
        "images": ctx.rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"),
        "token_ids": ctx.rng.integers(2, t["vocabulary_size"], (batch, t["sequence_length"])).astype("int32"),
    }
    x["token_ids"][:, -1] = 1
    keras.utils.set_random_seed(0)
    ctx.log(f"building {config_name} models for fit (ours, keras-hub)")
    ours = models.build_ours(config)
    built = {"ours": ours}
    if "keras-hub" in ctx.peers:
        built["keras-hub"] = models.build_keras_hub(config)
        models.copy_ours_to_keras_hub(ours, built["keras-hub"])
    warm_steps = 2  # the compiling step plus one: their losses are compared
    results, steps = {}, {}
    for name, model in built.items():
        # Both compile() overrides default the loss (ours SigmoidLoss, keras-hub
        # SigLIPLoss: the same value); the optimizer is the same Adam for both.
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        compile_s, loss0 = timing.first_call(lambda: model.train_on_batch(x))
        losses = [_loss(loss0)] + [_loss(model.train_on_batch(x)) for _ in range(warm_steps - 1)]
        mode = f"train_on_batch, jit_compile={model.jit_compile}"
        entry = {"label": PEER_LABELS[name], "mode": mode, "first_call_s": compile_s, "losses": losses}
        if name != "ours":
            entry.update(timing.agreement(results["ours"]["losses"], losses))
        results[name] = entry
        steps[name] = (lambda model: lambda: model.train_on_batch(x))(model)
    timings = timing.measure_interleaved(steps, 0, ctx.repeats(config_name, "fit_step"), 4)
    for name, summary in timings.items():
        results[name].update(summary, value=summary["median_ms"])
    row = {
        "case": "fit_step",
        "config": config_name,
        "backend": ctx.backend,
        "device": ctx.device,
        "batch": batch,
        "unit": "ms",
        "lower_is_better": True,
        "ours": results.pop("ours"),
        "peers": results,
        "flops": 3 * (models.image_forward_flops(config, batch) + models.text_forward_flops(config, batch)),
    }
    ctx.emit(row)
    return row


NAFLEX_SEQUENCE_LENGTH = 256


def mixed_aspect_sizes(count, rng, low=32, high=1024):
    """Image sizes (H, W) with log-uniform sides: aspect ratios from 1:32 to 32:1."""
    return [tuple(int(v) for v in np.exp(rng.uniform(np.log(low), np.log(high), 2))) for _ in range(count)]


def naflex_batch(sizes, patch_size, sequence_length, rng):
    """Random NaFlex inputs for images of `sizes`, at the grids the NaFlex size rule picks."""
    from keras_siglip.layers.naflex import target_size

    patch_dim = patch_size * patch_size * 3
    x = {
        "patches": np.zeros((len(sizes), sequence_length, patch_dim), "float32"),
        "patch_coords": np.zeros((len(sizes), sequence_length, 2), "int32"),
        "patch_mask": np.zeros((len(sizes), sequence_length), "int32"),
    }
    for i, (height, width) in enumerate(sizes):
        h, w = (side // patch_size for side in target_size(height, width, patch_size, sequence_length))
        n = h * w
        x["patches"][i, :n] = rng.uniform(-1, 1, (n, patch_dim))
        x["patch_coords"][i, :n] = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(n, 2)
        x["patch_mask"][i, :n] = 1
    return x


@case("naflex_forward", configs=("tiny", "B/16"), quick_configs=("tiny",),
      description="SigLIP 2 NaFlex image tower, 32 mixed-aspect images at N=256, vs HF Siglip2")
def naflex_forward(ctx, config_name):
    if "hf" not in ctx.peers:
        return []
    pair = ctx.naflex_models(config_name)
    config = models.naflex_config(config_name)
    batch = ctx.batch("naflex_forward", config_name)
    patch = config["vision_encoder"]["patch_size"]
    x = naflex_batch(mixed_aspect_sizes(batch, ctx.rng), patch, NAFLEX_SEQUENCE_LENGTH, ctx.rng)
    runs = {
        "ours": backends.keras_forward(pair["ours"].vision_encoder, x),
        "hf": backends.hf_naflex_forward(pair["hf"], x),
    }
    extra = {
        "flops": models.image_forward_flops(config, batch, NAFLEX_SEQUENCE_LENGTH),
        "sequence_length": NAFLEX_SEQUENCE_LENGTH,
        "real_token_fraction": float(x["patch_mask"].mean()),
    }
    return ctx.compare("naflex_forward", config_name, batch, runs, extra=extra)


@case("packing", description="NaViT packing: real-token fraction, packed vs one image per sequence")
def packing(ctx, _config):
    """Not timed: how much of a sequence holds real patches (1 - padding)."""
    from keras_siglip.data.packing import FirstFitPacker
    from keras_siglip.layers.naflex import target_size

    rng = np.random.default_rng(0)
    sizes = mixed_aspect_sizes(2000, rng, 32, 512)
    patch = 16
    settings = [
        # name, sequence length, per-image patch budget (None: native size, capped at 256), drop rate
        ("NaFlex resize, N=256", 256, 256, None),
        ("native resolution (<= 256 patches), N=256", 256, None, None),
        ("native resolution (<= 256 patches), N=1024", 1024, None, None),
        ("native resolution, N=1024, token drop U(0, 0.5)", 1024, None, (0.0, 0.5)),
    ]
    results = []
    for name, length, budget, drop in settings:
        packer = FirstFitPacker(length, 16, buffer_size=16, drop_rate=drop, seed=0)
        for height, width in sizes:
            h, w = height // patch, width // patch
            if budget is not None or h * w > 256 or h == 0 or w == 0:
                h, w = (side // patch for side in target_size(height, width, patch, budget or 256))
            coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
            packer.add({"patches": np.zeros((h * w, 1), "float32"), "patch_coords": coords})
        packer.flush()
        stats = packer.stats
        results.append({
            "setting": name, "sequence_length": length, "images": stats.images,
            "sequences": stats.sequences, "packed_real_fraction": stats.real_fraction,
            # Unpacked, each image is padded to the per-image cap (256), not to N.
            "one_per_sequence_real_fraction": stats.tokens / (stats.images * 256),
            "images_per_sequence": stats.images_per_sequence,
        })
    row = {"case": "packing", "config": None, "backend": ctx.backend, "device": ctx.device,
           "images": len(sizes), "patch_size": patch, "results": results}
    ctx.emit(row)
    return row
