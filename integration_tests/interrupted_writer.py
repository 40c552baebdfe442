"""Writers to kill: forked from this process, they write one target over and over.

Run by test_interrupted_writes.py. Importing Keras costs seconds (10-30 s on a
loaded 2-core machine), so this process imports it and builds the models once,
then forks one writer per command; the writer writes the target in a loop,
write k (0, 1, 2, ...) carrying k in the weights (the contrastive logit bias),
and this process SIGKILLs it after the command's delay. Forking after a
backend has run is unsafe (JAX deadlocks), so the writers use Keras' numpy
backend (set by the test): the file protocol under test is the same for every
backend, and the test reads the results back with its own backend.

Kinds of write (k even: atomic swap of folders; k odd: the two-rename commit):
- "save": `SigLIPZeroShotClassifier.save_to_preset`: backbone, preprocessor
  and task in one call; class name `write k`, tokenizer `PROTOS[k % 2]`.
- "convert": `write_huggingface` of the backbone (tokenizer `PROTOS[k % 2]`)
  into a scratch folder, then `convert` of it onto the target (overwrite).
- "backup": a `BackupAndRestore` backup after train step k (the optimizer's
  iteration count set to k).

Protocol: one JSON line in per command, {"kind", "target", "start", "delay",
"writes", "idle", "seed"}; one JSON line out, {"started": [k...], "completed":
[[k, seconds]...], "error"}. `delay` None: let the writer do `writes` writes
and exit; else kill it after `delay` seconds. The first line out gives the
SHA-256 of the two tokenizer protos.
"""

import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback

import keras
import numpy as np

from keras_siglip.callbacks import BackupAndRestore
from keras_siglip.convert import convert, write_huggingface
from keras_siglip.models import (
    SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer, SigLIPZeroShotClassifier,
)
from keras_siglip.utils import atomic
from tests.helpers import tiny_backbone, train_sentencepiece

OTHER_TEXTS = ["write one two three", "four five six seven eight", "nine ten eleven twelve"]
PROTOS = [train_sentencepiece("t5"), SigLIPTokenizer.from_texts(OTHER_TEXTS, 60, pad_token="</s>").proto]
BACKBONE = tiny_backbone()
MARKER = BACKBONE.weights[-1]  # contrastive_head/bias, shape (1,)
assert MARKER.path.endswith("contrastive_head/bias"), MARKER.path
BACKUP_MODEL = tiny_backbone()
BACKUP_MODEL.compile(optimizer=keras.optimizers.Adam(1e-3))
BACKUP_MODEL.optimizer.build(BACKUP_MODEL.trainable_variables)


def mark(model, k):
    model.weights[-1].assign(np.full((1,), k, "float32"))


def preprocessor(k):
    tokenizer = SigLIPTokenizer(proto=PROTOS[k % 2])
    return SigLIPPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=8)


def save(k, target):
    mark(BACKBONE, k)
    SigLIPZeroShotClassifier(BACKBONE, preprocessor(k), class_names=[f"write {k}"]).save_to_preset(target)


def convert_(k, target):
    mark(BACKBONE, k)
    source = os.path.join(os.path.dirname(target), "scratch_hf")
    write_huggingface(BACKBONE, source, tokenizer=preprocessor(k).tokenizer)
    convert(source, target, progress=False, overwrite=True)


class Backup:
    def __init__(self, target):
        self.callback = BackupAndRestore(target, save_freq=1, delete_checkpoint=False)
        self.callback.set_model(BACKUP_MODEL)
        self.callback.on_epoch_begin(0)

    def __call__(self, k, target):
        mark(BACKUP_MODEL, k)
        BACKUP_MODEL.optimizer.iterations.assign(k)
        self.callback.on_train_batch_end(k - 1)  # backs up after step k (save_freq=1)


def writer(command, report):
    """The forked writer: write k = start, start + 1, ... (forever unless `writes`)."""
    rng = random.Random(command["seed"])
    write = {"save": save, "convert": convert_, "backup": None}[command["kind"]] or Backup(command["target"])
    k = command["start"]
    while command["writes"] is None or k < command["start"] + command["writes"]:
        atomic._USE_EXCHANGE = k % 2 == 0
        report(f"s {k}")
        begin = time.perf_counter()
        write(k, command["target"])
        report(f"c {k} {time.perf_counter() - begin}")
        k += 1
        time.sleep(rng.uniform(0, command["idle"]))


def run(command):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0

        def report(line):
            os.write(write_end, (line + "\n").encode())

        try:
            writer(command, report)
        except BaseException:
            report("e " + json.dumps(traceback.format_exc()))
            status = 1
        os._exit(status)
    os.close(write_end)
    if command["delay"] is not None:
        time.sleep(command["delay"])
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        lines = f.read().splitlines()
    reply = {"started": [], "completed": [], "error": None}
    for line in lines:
        tag, rest = line.split(" ", 1)
        if tag == "s":
            reply["started"].append(int(rest))
        elif tag == "c":
            k, seconds = rest.split()
            reply["completed"].append([int(k), float(seconds)])
        else:
            reply["error"] = json.loads(rest)
    return reply


def main():
    print(json.dumps({"protos": [hashlib.sha256(p).hexdigest() for p in PROTOS]}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
