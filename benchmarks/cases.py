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

    def repeats(self, config_name):
        if self._repeats is not None:
            return self._repeats
        if config_name == "tiny":
            return 6 if self.quick else 30
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
            entry = {"label": PEER_LABELS.get(name, name), "mode": mode, "first_call_s": compile_s}
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
    timings = timing.measure_interleaved(steps, 0, ctx.repeats(config_name), ctx.rounds(config_name))
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
