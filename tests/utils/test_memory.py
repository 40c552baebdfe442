"""Converting without paying for the weights twice (`keras_siglip.utils.memory`):
zero weights that cost nothing until written, the swap undone on the way out,
`convert` building under it, and freed tensors going back to the system."""

import os
import platform
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_siglip import convert
from keras_siglip.utils import memory


def resident_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def count_entries(monkeypatch, module):
    """A list that gets one item each time code reading `module.weights_to_be_loaded` enters it."""
    entered = []
    real = memory.weights_to_be_loaded

    def spy():
        entered.append(True)
        return real()

    monkeypatch.setattr(module, "weights_to_be_loaded", spy)
    return entered


def test_weights_are_zero_inside_and_random_outside():
    with memory.weights_to_be_loaded():
        inside = keras.layers.Dense(8, bias_initializer="ones")
        inside.build((None, 4))
    outside = keras.layers.Dense(8)
    outside.build((None, 4))
    for variable in inside.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 0.0)
    assert np.abs(keras.ops.convert_to_numpy(outside.kernel)).max() > 0


def test_the_swap_is_undone_when_the_build_fails():
    original = keras.layers.Layer.add_weight
    with pytest.raises(RuntimeError):
        with memory.weights_to_be_loaded():
            raise RuntimeError("build failed")
    assert keras.layers.Layer.add_weight is original


def test_only_the_thread_inside_builds_zeros():
    """A model another thread builds meanwhile (a web server loading a preset
    while a request builds a classifier head) keeps its random weights."""
    import threading

    inside, outside = threading.Event(), threading.Event()
    layers = {}

    def build_outside():
        inside.wait(timeout=60)
        layers["outside"] = keras.layers.Dense(8)
        layers["outside"].build((None, 4))
        outside.set()

    thread = threading.Thread(target=build_outside)
    thread.start()
    with memory.weights_to_be_loaded():
        inside.set()
        assert outside.wait(timeout=60)
        layers["inside"] = keras.layers.Dense(8)
        layers["inside"].build((None, 4))
    thread.join()
    assert np.abs(keras.ops.convert_to_numpy(layers["outside"].kernel)).max() > 0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layers["inside"].kernel), 0.0)


def test_a_backbone_preset_loads_without_drawing_random_weights(monkeypatch):
    """`Backbone.from_preset` builds under `weights_to_be_loaded` and every
    weight then holds the file's value (equal to a random build that loaded the
    same file); with `load_weights=False`, and for a task's new head, weights
    stay random."""
    from keras_siglip.models import SigLIPBackbone, SigLIPImageClassifier
    from keras_siglip.presets import SHIPPED_PRESETS

    entered = count_entries(monkeypatch, memory)
    loaded = SigLIPBackbone.from_preset("siglip2_shapes_tiny")
    assert entered == [True]
    reference = SigLIPBackbone.from_preset("siglip2_shapes_tiny", load_weights=False)
    assert entered == [True]
    reference.load_weights(os.path.join(SHIPPED_PRESETS["siglip2_shapes_tiny"], "model.weights.h5"))
    assert [w.path for w in loaded.weights] == [w.path for w in reference.weights]
    for ours, theirs in zip(loaded.weights, reference.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))

    classifier = SigLIPImageClassifier.from_preset("siglip2_shapes_tiny", num_classes=5)
    assert entered == [True, True]  # its image tower, loaded; the new head is not
    head = next(w for w in classifier.weights if w.path.endswith("kernel") and w.shape[-1] == 5)
    assert np.abs(keras.ops.convert_to_numpy(head)).max() > 0


def test_models_built_after_a_preset_get_the_random_weights_they_got_before():
    """Loading a preset draws from Python's `random` as building it randomly
    does (Keras seeds each initializer it makes from it), so a guide's fresh
    model after `from_preset` starts from the same weights as before."""
    from keras_siglip.models import SigLIPBackbone

    def head_after(**kwargs):
        keras.utils.set_random_seed(0)
        SigLIPBackbone.from_preset("siglip2_shapes_tiny", **kwargs)
        head = keras.layers.Dense(8)
        head.build((None, 4))
        return keras.ops.convert_to_numpy(head.kernel)

    np.testing.assert_array_equal(head_after(), head_after(load_weights=False))


def test_a_weight_missing_from_a_preset_is_still_refused(tmp_path):
    """Building with zeros leaves nothing unassigned silently: a preset whose
    weights file lacks a layer's weights is refused, naming the layer."""
    import shutil

    import h5py

    from keras_siglip.convert.common import CheckpointMismatch
    from keras_siglip.models import SigLIPBackbone
    from keras_siglip.presets import SHIPPED_PRESETS
    from keras_siglip.utils.checksums import record_checksums

    preset = str(tmp_path / "preset")
    shutil.copytree(SHIPPED_PRESETS["siglip2_shapes_tiny"], preset)
    with h5py.File(os.path.join(preset, "model.weights.h5"), "a") as file:
        groups = []
        file.visit(lambda name: groups.append(name) if name.endswith("/vars") and len(file[name]) else None)
        layer = next(name for name in groups if "/dense" in name)
        del file[layer]
    record_checksums(preset)  # the damage is the test's, not the disk's
    with pytest.raises(CheckpointMismatch, match="expected 2 variables, but received 0"):
        SigLIPBackbone.from_preset(preset)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow" or platform.system() != "Linux",
                    reason="torch and JAX on CPU adopt host buffers; resident memory read from /proc")
def test_weights_cost_nothing_until_written():
    before = resident_mib()
    with memory.weights_to_be_loaded():
        layer = keras.layers.Dense(4096)
        layer.build((None, 4096))  # a 64 MiB kernel
    assert resident_mib() - before < 16
    before = resident_mib()
    tensor = np.ones((4096, 4096), "float32")  # as read from a checkpoint
    layer.kernel.assign(memory.host_tensor(tensor))
    del tensor
    assert 48 < resident_mib() - before < 80  # the zeros were never resident: one 64 MiB weight
    assert keras.ops.convert_to_numpy(layer.kernel).sum() == 4096 * 4096


def test_convert_builds_under_it(monkeypatch, tmp_path):
    """`convert` builds the model under `weights_to_be_loaded` (and a real
    conversion still loads every weight: the readers' round-trip tests)."""
    entered = count_entries(monkeypatch, convert)
    from tests.helpers import tiny_backbone
    from keras_siglip.convert.huggingface import write_huggingface

    write_huggingface(tiny_backbone(image_size=16), str(tmp_path / "hf"))
    convert.convert(str(tmp_path / "hf"), str(tmp_path / "ours"), progress=False)
    assert entered == [True]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_tensors_go_back_to_the_system():
    """Free every other 2 MiB buffer after glibc raised its mmap threshold: the
    holes stay resident by default and are returned with the setting."""
    script = textwrap.dedent("""
        import sys, numpy as np
        if sys.argv[1] == "set":
            from keras_siglip.utils.memory import return_freed_tensors_to_the_system
            assert return_freed_tensors_to_the_system()
        def resident():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
        big = np.ones(2**22, np.float32); del big  # a freed 16 MiB block raises the threshold
        start = resident()
        buffers = [np.ones(2**19, np.float32) for _ in range(200)]  # 400 MiB
        del buffers[::2]
        print(resident() - start)
    """)
    kept = {mode: int(subprocess.run([sys.executable, "-c", script, mode], check=True, capture_output=True,
                                     text=True).stdout.split()[-1]) for mode in ("default", "set")}
    assert kept["default"] > 350  # the holes stayed: the scenario is real
    assert kept["set"] < 250, kept
