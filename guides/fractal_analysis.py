"""Guide: fractal parameters of text, from per-token log-probabilities.

Alabdulmohsin, Tran & Dehghani (NeurIPS 2024) turn a document into the series of
per-token surprisals `-log2 p(w_t | w_<t)` from a language model, standardise it,
and measure how it scales: the self-similarity exponent S (`P(|X_{t+tau} - X_t| <=
eps) ~ tau^-S`), the Hurst exponent H (rescaled range, `R/S ~ n^H`; H > 0.5 means
long-range dependence), the Joseph exponent J (`std(X_{t+tau} - X_t) ~ tau^J`) and
the fractal dimension D = 2 - S. Natural language gives S ~ 0.59, H ~ 0.70,
J ~ 0.49 (PaLM2-L on The Pile).

`ks.analysis.fractal_analysis` takes log-probabilities from any scoring model;
`ks.analysis.score_token_log_probs` gets them from a keras-hub `CausalLM`, a Hugging
Face causal LM, a `CapPaCaptioner` (or any callable returning logits). Here:

(a) fractional Gaussian noise with known H, where S = H = J in theory;
(b) a tiny CapPa captioner, trained for a few seconds on the procedural shapes data,
    scoring held-out captions. Captions are a few tokens long, so they are joined
    into one stream and cut into 128-token segments (the bootstrap resamples
    segments); the scales are small to match. A tiny model on a tiny data set
    illustrates the API: its numbers say nothing about language.

Runs offline (the tokenizer comes from the shipped `siglip2_shapes_tiny` preset).

    python guides/fractal_analysis.py
"""

import pathlib
import tempfile
import time

import keras
import numpy as np

import keras_siglip as ks
from keras_siglip.analysis import fractal
from keras_siglip.data import shapes


def synthetic(hursts=(0.5, 0.7, 0.9), num_docs=32, doc_length=2048, seed=0):
    """(a) Exponents of exact fGn (already standardised: normalize="none")."""
    print("(a) fractional Gaussian noise, "
          f"{num_docs} documents x {doc_length} steps")
    print(f"{'true H':>8}{'S':>8}{'H (R/S)':>10}{'J':>8}{'D':>8}")
    results = {}
    for hurst in hursts:
        series = fractal.fractional_gaussian_noise(doc_length, hurst, seed=seed, size=num_docs)
        result = fractal.fractal_parameters(
            series, normalize="none", epsilon=0.1, tau_scales=[4, 8, 16, 32, 64, 128],
            hurst_scales=[16, 32, 64, 128, 256], seed=seed,
        )
        results[hurst] = result
        print(f"{hurst:>8.2f}{result.S:>8.3f}{result.H:>10.3f}{result.J:>8.3f}{result.D:>8.3f}")
        # For fGn every exponent estimates the true H (D = 2 - S): the estimators recover it.
        assert abs(result.J - hurst) < 0.05 and abs(result.S - hurst) < 0.06, (hurst, result)
        assert abs(result.H - hurst) < 0.1 and abs(result.D - (2 - result.S)) < 1e-6, (hurst, result)
    return results


def tiny_captioner(num_train=1000, epochs=2, seed=0):
    """A tiny CapPa captioner, briefly trained on shapes captions."""
    preset_preprocessor = ks.models.SigLIPPreprocessor.from_preset("siglip2_shapes_tiny")
    tokenizer = preset_preprocessor.tokenizer
    preprocessor = ks.models.CapPaPreprocessor(
        tokenizer, ks.models.SigLIPImageConverter(image_size=(48, 48)), sequence_length=16
    )
    keras.utils.set_random_seed(seed)
    backbone = ks.models.CapPaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), patch_size=8, width=48, depth=1,
        num_heads=2, mlp_dim=96, image_size=48, max_length=16, decoder_depth=1,
    )
    captioner = ks.models.CapPaCaptioner(backbone, preprocessor, masked_pred_prob=0.0, seed=seed)
    train = shapes.ShapesDataset(num_train, seed=seed).arrays()
    captioner.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4, global_clipnorm=1.0))
    history = captioner.fit({"images": train["images"], "texts": train["captions"]},
                            batch_size=50, epochs=epochs, verbose=0)
    return captioner, history.history["loss"]


def captions(num_captions=1000, num_train=1000, epochs=2, segment_length=128, num_bootstrap=200,
             plot_path=None, seed=0):
    """(b) Exponents of a tiny captioner's surprisal on held-out captions."""
    start = time.time()
    captioner, losses = tiny_captioner(num_train, epochs, seed)
    print(f"\n(b) tiny CapPa, {epochs} epochs on {num_train} captions in {time.time() - start:.0f}s "
          f"(loss {losses[0]:.2f} -> {losses[-1]:.2f})")
    held_out = shapes.ShapesDataset(num_captions, seed=seed + 1).arrays()
    log_probs = fractal.score_token_log_probs(
        captioner, texts=list(held_out["captions"]), images=held_out["images"], batch_size=200
    )
    tokens = sum(len(x) for x in log_probs)
    bits = -np.concatenate(log_probs).mean() / np.log(2)
    print(f"scored {len(log_probs)} captions, {tokens} tokens, {bits:.2f} bits per token")
    # The captioner learned: its loss fell and it beats a uniform guess over the vocabulary.
    uniform_bits = np.log2(captioner.backbone.vocabulary_size)
    assert losses[-1] < losses[0] and bits < uniform_bits - 2, (losses, bits, uniform_bits)
    result = fractal.fractal_analysis(
        log_probs, concatenate=True, segment_length=segment_length, epsilon=0.1,
        tau_scales=[2, 3, 4, 6, 8, 12, 16, 24, 32], hurst_scales=[8, 12, 16, 24, 32, 48, 64],
        num_bootstrap=num_bootstrap, seed=seed, plot_path=plot_path,
    )
    print(result.table(f"fractal parameters, {segment_length}-token segments"))
    # Surprisal of captions is persistent, as the paper finds for language (H > 0.5, the
    # value of independent noise): the whole 95% interval lies above it.
    assert result.ci["H"][0] > 0.5, result.table()
    return result


def main(out_dir=None, num_captions=1000, num_train=1000, epochs=2, seed=0):
    """Runs (a) and (b); writes the captioner's log-log plot to
    `out_dir/fractal_analysis.png` (default: a temporary folder) and returns
    `{"synthetic": {H: FractalResult}, "captions": FractalResult, "plot": path}`."""
    out_dir = pathlib.Path(out_dir or tempfile.mkdtemp(prefix="fractal_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = out_dir / "fractal_analysis.png"
    synthetic_results = synthetic(seed=seed)
    caption_result = captions(num_captions, num_train, epochs, plot_path=plot_path, seed=seed)
    print(f"log-log plot with the fits: {plot_path} ({plot_path.stat().st_size} bytes)")
    return {"synthetic": synthetic_results, "captions": caption_result, "plot": plot_path}


if __name__ == "__main__":
    main()
