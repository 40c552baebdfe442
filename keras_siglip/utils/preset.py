"""Preset names, clear errors for unknown ones, and atomic preset writes."""

import contextlib
import difflib
import os
import shutil
import tempfile

from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

# Temporary folders being written now: nested saves (a task saving its backbone
# and preprocessor) write straight into them.
_OPEN_WRITES = set()


def known_preset_names():
    from keras_siglip.presets import PUBLISHED_PRESETS

    return sorted(set(BUILTIN_PRESETS) | set(PUBLISHED_PRESETS))


def check_preset(preset):
    """Raise a clear error unless `preset` is a URI, a folder or a known name."""
    if not isinstance(preset, (str, os.PathLike)):
        raise TypeError(f"A preset must be a name, URI or folder path; got {preset!r}.")
    preset = os.fspath(preset)
    if "://" in preset or os.path.isdir(preset) or preset in BUILTIN_PRESETS:
        return preset
    if os.path.exists(preset):
        raise ValueError(f"Preset {preset!r} is a file; a preset is a folder (or a big_vision .npz).")
    names = known_preset_names()
    close = difflib.get_close_matches(preset, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown preset {preset!r}: not a known name, a folder, or a "
        f"kaggle:// / hf:// URI.{hint} List the names with `keras-siglip presets`."
    )


@contextlib.contextmanager
def atomic_directory(target):
    """Yield a temporary sibling folder that replaces `target` only on success.

    The folder starts as a copy of `target`'s files, so saving a backbone and
    then a preprocessor into one preset folder (the keras-hub way) keeps both.
    An interrupted write leaves `target` as it was: the new content becomes
    visible by renames, after it is complete.
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    if os.path.isdir(target):
        # Copies, not hard links: writers truncate files in place.
        shutil.copytree(target, tmp, dirs_exist_ok=True)
    _OPEN_WRITES.add(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _OPEN_WRITES.discard(tmp)
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target, suffix=""):
    """Yield a temporary path beside `target` that replaces it only on success.

    Write the file at the yielded path (its name ends with `suffix`, for
    writers that check extensions); when the block ends without an error the
    file is flushed to disk and `os.replace`d onto `target`, so readers see
    the old file or the whole new one, never a partial write. On an error
    the temporary file is removed and `target` is untouched.
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.tmp-", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        _fsync(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, target)
    _fsync(parent, directory=True)


def _fsync(path, directory=False):
    """Flush a file (or a folder's entries) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def preset_loader(preset):
    """`(resolved preset, keras-hub loader, backbone class)`; converts foreign
    checkpoints (big_vision, Hugging Face, keras-hub) once, like every
    `from_preset` here."""
    from keras_hub.src.utils.preset_utils import get_preset_loader

    from keras_siglip.convert import resolve_preset

    preset = check_preset(resolve_preset(preset))
    loader = get_preset_loader(preset)
    return preset, loader, loader.check_backbone_class()


class PresetMixin:
    """Adds name checking to `from_preset` and atomic `save_to_preset`."""

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Also takes big_vision `.npz` files and Hugging Face / keras-hub folders
        or `hf://` / `kaggle://` URIs of them: converted once, then cached."""
        from keras_siglip.convert import resolve_preset

        return super().from_preset(check_preset(resolve_preset(preset)), **kwargs)

    def save_to_preset(self, preset_dir, **kwargs):
        if os.path.abspath(os.fspath(preset_dir)) in _OPEN_WRITES:
            return super().save_to_preset(preset_dir, **kwargs)
        with atomic_directory(preset_dir) as tmp:
            super().save_to_preset(tmp, **kwargs)
