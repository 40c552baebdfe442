"""Peak memory of converting a full-size checkpoint, as a multiple of its size.

    python -m benchmarks.conversion_memory                       # So400m/16 SigLIP 2, 256k vocab
    python -m benchmarks.conversion_memory --preset siglip_base_patch16_224 --backends jax

Writes a random Hugging Face checkpoint of the published architecture (float32
safetensors, built by `transformers` on its own, not by us), then converts it
with `keras-siglip convert` in a fresh process per backend and reads that
process's peak resident memory. The conversion builds the model with zero
weights (no random draws), streams tensors one at a time into it and has
freed tensors returned to the system, so the peak is one copy of the weights
plus the tensor in flight plus the frameworks' own footprint (measured
separately: the same process importing everything and exiting).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from benchmarks import worker
from benchmarks.worker import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_random_hf(preset, folder):
    """A random `transformers` model of a published card's architecture, saved as safetensors."""
    import torch
    import transformers

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from hf_reference import hf_config_from_keras

    from keras_siglip.presets import PUBLISHED_PRESETS

    config = hf_config_from_keras(PUBLISHED_PRESETS[preset]["config"])
    model_class = transformers.Siglip2Model if isinstance(config, transformers.Siglip2Config) else transformers.SiglipModel
    torch.manual_seed(0)
    with torch.no_grad():
        model = model_class(config).float().eval()
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="2GB")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def measure(source, size, backend, work):
    """Peak RSS of `keras-siglip convert` on `backend`, next to the import footprint."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    print(f"[{backend}] measuring the frameworks' own footprint ...", flush=True)
    _, baseline = worker.child_peak_rss(
        [sys.executable, "-c", "import keras, keras_siglip.convert, keras_siglip.models"], env)
    print(f"[{backend}] converting with keras-siglip convert ...", flush=True)
    destination = os.path.join(work, f"ours_{backend}")
    seconds, peak = worker.child_peak_rss(
        [sys.executable, "-m", "keras_siglip.cli", "convert", source, destination], env)
    shutil.rmtree(destination, ignore_errors=True)
    print(f"[{backend}] peak {peak / 2**30:.2f} GiB = {(peak - baseline) / size:.2f}x the checkpoint above "
          f"the {baseline / 2**30:.2f} GiB import footprint ({seconds:.0f} s)", flush=True)
    return {
        "backend": backend,
        "peak_rss_bytes": peak,
        "import_baseline_rss_bytes": baseline,
        "peak_over_size": peak / size,
        "peak_minus_baseline_over_size": (peak - baseline) / size,
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conversion_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="siglip2_so400m_patch16_256")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, default all three")
    parser.add_argument("--out", default=os.path.join(HERE, "conversion_memory.json"))
    args = parser.parse_args(argv)
    backends = worker.backend_list(args.backends)
    work = tempfile.mkdtemp(prefix="keras_siglip_convmem_")
    try:
        source = os.path.join(work, "hf")
        print(f"writing a random {args.preset} HF checkpoint ...", flush=True)
        start = time.perf_counter()
        size = write_random_hf(args.preset, source)
        print(f"  {size / 2**30:.2f} GiB of safetensors in {time.perf_counter() - start:.0f} s", flush=True)
        result = {
            "preset": args.preset,
            "checkpoint_bytes": size,
            "runs": [measure(source, size, backend, work) for backend in backends],
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {os.path.relpath(args.out)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
