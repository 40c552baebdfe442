"""Building a model whose weights are about to be overwritten, without paying for them twice."""

import contextlib
import threading

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


_loading = threading.local()  # per thread: how many `weights_to_be_loaded` contexts it is in
_patch_lock = threading.Lock()
_patch_users = 0  # threads inside a context; Keras' own add_weight is swapped while > 0
_keras_add_weight = None


def _make_initializer(layer, args, kwargs):
    """Make the initializer Keras' `add_weight` would make (and not use it): a random one
    named by a string, or the default `glorot_uniform`, draws its seed from Python's
    `random` when made, so models built after this one get the random weights they would
    have got."""
    initializer = args[1] if len(args) > 1 else kwargs.get("initializer")
    if initializer is None:
        dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
        dtype = layer.variable_dtype if dtype is None else keras.backend.standardize_dtype(dtype)
        initializer = "glorot_uniform" if "float" in dtype else "zeros"
    keras.initializers.get(initializer)


def _add_weight(self, *args, **kwargs):
    if getattr(_loading, "depth", 0):
        _make_initializer(self, args, kwargs)
        if len(args) > 1:  # legacy positional (shape, initializer, dtype)
            args = (args[0], _untouched_zeros) + tuple(args[2:])
        else:
            kwargs["initializer"] = _untouched_zeros
    return _keras_add_weight(self, *args, **kwargs)


@contextlib.contextmanager
def weights_to_be_loaded():
    """Build layers with zero weights that cost no memory until written.

    Inside the context every `Layer.add_weight` gets a zeros initializer
    instead of its random one: no random numbers are drawn (no per-shape JAX
    compilation) and, where the backend adopts host buffers (torch, JAX on
    CPU), a weight takes no resident memory until its checkpoint tensor is
    assigned, so a conversion peaks near one copy of the weights.
    Only for models whose every weight is assigned right after (as
    `convert.load_into` checks, and Keras when loading a preset's weights);
    a weight left unassigned would stay zero. Only the thread that entered
    the context builds with zeros: `keras.layers.Layer.add_weight` is swapped
    while any thread is inside one, and the swap reads a per-thread flag.
    """
    global _patch_users, _keras_add_weight
    with _patch_lock:
        if _patch_users == 0:
            _keras_add_weight = keras.layers.Layer.add_weight
            keras.layers.Layer.add_weight = _add_weight
        _patch_users += 1
    _loading.depth = getattr(_loading, "depth", 0) + 1
    try:
        yield
    finally:
        _loading.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                keras.layers.Layer.add_weight = _keras_add_weight


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
