"""Building a model whose weights are about to be overwritten, without paying for them twice."""

import contextlib

import keras
import numpy as np


def host_tensor(array):
    """`array` as a backend tensor sharing its memory where the backend can:
    torch (`torch.from_numpy`; Keras' own conversion copies every numpy
    array) and JAX on CPU (`jax.device_put` adopts 64-byte aligned buffers);
    otherwise `array` itself, which `assign` copies as usual."""
    backend = keras.backend.backend()
    if backend == "torch" and array.flags.writeable:
        import torch

        try:
            return torch.from_numpy(array)
        except TypeError:  # a dtype torch cannot share (bfloat16 from ml_dtypes ...)
            return array
    if backend == "jax" and array.ctypes.data % 64 == 0 and array.flags.c_contiguous:
        import jax

        return jax.device_put(array)
    return array


def _untouched_zeros(shape, dtype=None):
    """Zeros whose pages are never written: np.zeros of a large array is
    calloc'd, mapped lazily, and costs no memory until written; torch and JAX
    (see `host_tensor`) keep that buffer, other backends copy it into their
    own (one copy, as with any initializer)."""
    dtype = np.dtype(keras.backend.standardize_dtype(dtype))
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(size + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return host_tensor(raw[offset:offset + size].view(dtype).reshape(shape))


@contextlib.contextmanager
def weights_to_be_loaded():
    """Build layers with zero weights that cost no memory until written.

    Inside the context every `Layer.add_weight` gets a zeros initializer
    instead of its random one: no random numbers are drawn (no per-shape JAX
    compilation) and, where the backend adopts host buffers (torch, JAX on
    CPU), a weight takes no resident memory until its checkpoint tensor is
    assigned, so a conversion peaks near one copy of the weights.
    Only for models whose every weight is assigned right after (as
    `convert.load_into` checks); a weight left unassigned would stay zero.
    Not thread-safe: it swaps `keras.layers.Layer.add_weight` for its duration.
    """
    original = keras.layers.Layer.add_weight

    def add_weight(self, *args, **kwargs):
        if len(args) > 1:  # legacy positional (shape, initializer, dtype)
            args = (args[0], _untouched_zeros) + tuple(args[2:])
        else:
            kwargs["initializer"] = _untouched_zeros
        return original(self, *args, **kwargs)

    keras.layers.Layer.add_weight = add_weight
    try:
        yield
    finally:
        keras.layers.Layer.add_weight = original


def return_freed_tensors_to_the_system(threshold=1 << 20):
    """Have glibc serve allocations of `threshold` bytes and more by mmap, so a
    freed tensor goes back to the system at once. Returns whether it applied.

    By default glibc raises that threshold to the largest block freed so far
    (up to 32 MiB), after which tensors come from the heap and freed ones stay
    resident: converting a checkpoint (read a tensor, copy it into the model,
    free the old weight) then grows by up to a copy of the weights. With a
    fixed threshold a conversion peaks at one copy of the weights plus the
    tensor in flight. Process-wide; the `keras-siglip convert` command calls
    it (a process of its own). No effect off glibc (macOS, musl).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    M_MMAP_THRESHOLD = -3
    return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(threshold)))
