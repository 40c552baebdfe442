"""Checksums of a preset's weight files, recorded in its `metadata.json`.

Saving records the size and SHA-256 of every `*.weights.h5` (and sharded
`*.weights.json` index) the folder holds; loading a local preset verifies
them before a byte is read as a weight, so a file damaged on disk, cut short
by a failed copy or swapped for another is refused, naming the file, instead
of loading (a flipped bit in a float is no error to h5py). Hashing runs at
disk speed (about 1 s per GB); presets saved before checksums existed load
unverified.
"""

import hashlib
import json
import os

from keras_siglip.convert.common import CorruptCheckpoint

METADATA = "metadata.json"
KEY = "keras_siglip_checksums"
_BLOCK = 8 << 20


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_files(folder):
    return sorted(name for name in os.listdir(folder)
                  if name.endswith((".weights.h5", ".weights.json")) and os.path.isfile(os.path.join(folder, name)))


def record_checksums(folder, backbone=None):
    """Add the weight files' sizes and SHA-256 to `folder/metadata.json` (and,
    given the backbone, name the tasks that take it: keras-hub's own list
    names our tasks' first base class). No metadata file: nothing to do."""
    path = os.path.join(folder, METADATA)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        metadata = json.load(f)
    metadata[KEY] = {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                            "sha256": file_sha256(os.path.join(folder, name))}
                     for name in _weight_files(folder)}
    if backbone is not None:
        metadata["tasks"] = _task_names(type(backbone))
    with open(path, "w") as f:
        json.dump(metadata, f, indent=4)


def verify_checksums(folder):
    """Raise `CorruptCheckpoint` naming each recorded weight file whose size or
    SHA-256 differs from the record (`FileNotFoundError` for a missing one)."""
    path = os.path.join(folder, METADATA)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        recorded = (json.load(f) or {}).get(KEY) or {}
    for name, entry in sorted(recorded.items()):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} is missing: {METADATA} records it as part of this preset.")
        size = os.path.getsize(file)
        if size != entry.get("bytes"):
            raise CorruptCheckpoint(
                f"{file} has {size:,} bytes; the preset recorded {entry.get('bytes'):,} when it was saved "
                "(cut short or replaced). Download or convert the preset again.")
        if file_sha256(file) != entry.get("sha256"):
            raise CorruptCheckpoint(
                f"{file} does not match the SHA-256 recorded when the preset was saved (damaged on disk or "
                "changed since). Download or convert the preset again.")


def _task_names(backbone_cls):
    from keras_hub.models import Task
    from keras_hub.src.utils.preset_utils import list_subclasses

    return sorted({task.__name__ for task in list_subclasses(Task) if task.backbone_cls is backbone_cls})
