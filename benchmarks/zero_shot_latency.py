"""Zero-shot latency per image of the shipped model, warm, on every backend.

    python -m benchmarks.zero_shot_latency                  # all three backends
    python -m benchmarks.zero_shot_latency --backends torch --repeats 20

`SigLIPZeroShotClassifier.classify` on `siglip2_shapes_tiny` with its 48
colour x shape labels, as `keras-siglip zero-shot` and the web app call it
(it runs the model compiled from its second call), against
the same preprocessing and the Keras model called eagerly (what `classify`
ran before; probabilities compared). One image per call and 32, one process
per backend; the first two calls timed, then warm calls of the two
interleaved: milliseconds per image, medians. Start-up is
`benchmarks.startup`'s subject.
Writes `benchmarks/zero_shot_latency.json` and prints a table.
"""

import argparse
import json
import os
import subprocess
import sys

from benchmarks import worker
from benchmarks.worker import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PRESET = "siglip2_shapes_tiny"
BATCHES = (1, 32)


def measure_backend(repeats):
    """This process's backend: per images-per-call, ms per image of `classify`
    and of the eager model on the same preprocessing, and the first two calls."""
    import keras
    import numpy as np

    from benchmarks.timing import first_call, measure_interleaved
    from keras_siglip.data import shapes
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor, SigLIPZeroShotClassifier

    classifier = SigLIPZeroShotClassifier(SigLIPBackbone.from_preset(PRESET), SigLIPPreprocessor.from_preset(PRESET),
                                          class_names=shapes.class_names())

    def eager(images):  # what `classify` ran before it compiled: the Keras model called eagerly
        batch = np.stack([keras.ops.convert_to_numpy(classifier.preprocessor.convert_images(image))
                          for image in images])
        return keras.ops.convert_to_numpy(classifier({"images": batch}, training=False))

    def classify(images):
        ranked = classifier.classify(images, top_k=len(classifier.class_names))
        return np.array([[dict(r)[label] for label in classifier.class_names] for r in ranked])

    data = shapes.ShapesDataset(max(BATCHES), seed=7)
    result = {"labels": len(classifier.class_names)}
    for batch in BATCHES:
        images = [data[i]["image"] for i in range(batch)]
        first_s, _ = first_call(lambda: classify(images))
        second_s, probabilities = first_call(lambda: classify(images))
        max_diff = float(np.max(np.abs(probabilities - eager(images))))
        times = measure_interleaved({"eager": lambda: eager(images), "classify": lambda: classify(images)},
                                    warmup=3, repeats=repeats)
        result[str(batch)] = {"eager_ms_per_image": times["eager"]["median_ms"] / batch,
                              "classify_ms_per_image": times["classify"]["median_ms"] / batch,
                              "first_call_s": first_s, "second_call_s": second_s, "max_abs_diff": max_diff}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(HERE, "zero_shot_latency.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure_backend(args.repeats)))
        return 0
    results = {}
    for backend in worker.backend_list(args.backends):
        print(f"[{backend}] measuring ...", flush=True)
        run = subprocess.run([sys.executable, "-m", "benchmarks.zero_shot_latency", "--worker",
                              "--repeats", str(args.repeats)], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if run.returncode != 0:
            raise SystemExit(f"{backend} worker failed:\n{run.stderr[-2000:]}")
        results[backend] = json.loads(run.stdout.strip().splitlines()[-1])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| backend | images per call | eager model ms/image | classify ms/image | speed-up | "
          "first / second call s | max abs diff |\n|---|---|---|---|---|---|---|")
    for backend, result in results.items():
        for batch in BATCHES:
            row = result[str(batch)]
            print(f"| {backend} | {batch} | {row['eager_ms_per_image']:.2f} | {row['classify_ms_per_image']:.2f} | "
                  f"{row['eager_ms_per_image'] / row['classify_ms_per_image']:.1f}x | "
                  f"{row['first_call_s']:.1f} / {row['second_call_s']:.1f} | {row['max_abs_diff']:.1e} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
