"""Converting without paying for the weights twice (`keras_siglip.utils.memory`):
zero weights that cost nothing until written, the swap undone on the way out,
`convert` building under it, and freed tensors going back to the system."""

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
    entered = []
    real = memory.weights_to_be_loaded

    def spy():
        entered.append(True)
        return real()

    monkeypatch.setattr(convert, "weights_to_be_loaded", spy)
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
