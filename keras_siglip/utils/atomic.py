"""Crash-safe writes: a folder or a file replaces its target whole, or not at all.

Every writer here follows one protocol, so that a process killed at any
instant (SIGKILL, power loss after the rename is on disk) leaves the target
as it was or as the new complete version, never a mix and never a partial one:

- The new version is written in a hidden sibling, `.NAME.tmp-XXXXXXXX` (NAME
  the target's name, 8 random characters, a file keeps the suffix its writer
  asks for), created as a plain `os.mkdir` / `open(path, "w")` would create
  it: the umask decides its mode (an existing file target keeps its mode).
- Writers of one target hold its writer lock for the whole write: an
  exclusive `flock` on `.NAME.lock` beside it, released by the kernel when
  its process dies and removed when the write ends. Writes of one target
  are therefore serialized across processes, and whatever of ours lies
  beside a target whose lock we hold (`.NAME.tmp-*`, `.NAME.old-*`) was left
  by a dead writer: the next write removes it ("stale"). A live writer's
  temporary is never removed. Where the platform or the file system has no
  working locks (no `fcntl`, `flock` refused) nothing is cleaned up, so
  nothing live can be lost.
- Commit. A file: flushed, then `os.replace`d onto the target (atomic). A
  folder: its files are flushed, then it is swapped with the target by
  `renameat2(RENAME_EXCHANGE)` (Linux 3.15+ on ext4, XFS, btrfs, tmpfs, ...):
  one atomic step, readers in other processes see the old folder or the new
  one, never no folder. Where the exchange is not available (other systems,
  NFS and other file systems) the target is renamed to `.NAME.old-*` and the
  new folder renamed onto its name: two renames, between which the target
  name is missing for an instant (never partial). A writer killed in that
  instant leaves the last complete version in `.NAME.old-*`; the next write
  of the target, or `recover` (which `from_preset` calls for a missing
  folder), renames it back, with a warning.
"""

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import stat
import sys
import threading
import warnings

try:
    import fcntl
except ImportError:  # Windows: no locks, so no clean-up either
    fcntl = None

# Temporary folders being written now: nested saves (a task saving its backbone
# and preprocessor) write straight into them.
_OPEN_WRITES = set()

# Writer locks this process holds: lock path -> [depth, fd or None]. A nested
# write of the same target (or one from another thread) neither waits for the
# lock it already holds nor cleans up (the outer write's temporary is live).
_HELD = {}
_HELD_GUARD = threading.Lock()

_TOKEN = "[a-z0-9_]{8}"  # also matches the `tempfile.mkdtemp` names of earlier versions
# False forces the two-rename commit (tests exercise both).
_USE_EXCHANGE = sys.platform.startswith("linux")


class DestinationKindError(ValueError):
    """The target exists as the other kind: a file where a folder is written, or a folder where a file is."""


@contextlib.contextmanager
def atomic_directory(target, merge=True):
    """Yield a temporary sibling folder that replaces `target` whole on success.

    Args:
        target: the folder to write. An existing file there is refused
            (`DestinationKindError`), never replaced.
        merge: start from a copy of `target`'s files, so that saving a
            backbone and then a preprocessor into one preset folder in two
            calls (the keras-hub way) keeps both. With `merge=False` the
            folder starts empty and replaces `target` whole: none of the old
            files survive beside the new ones.

    On an error in the block the temporary folder is removed and `target` is
    untouched. See the module docstring for the protocol: the commit swaps
    the folders atomically where Linux allows it, and stale temporaries of
    killed writers are removed here.
    """
    target = _resolve(target)
    with writer_lock(target) as owner:
        if owner:
            _clean(target)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise DestinationKindError(
                f"{target} is a file; a preset is written as a folder. Remove the file or choose another name."
            )
        tmp = _new_sibling(target, "tmp", directory=True)
        try:
            if merge and os.path.isdir(target):
                # Copies, not hard links: writers truncate files in place.
                shutil.copytree(target, tmp, dirs_exist_ok=True)
            _OPEN_WRITES.add(tmp)
            try:
                yield tmp
            finally:
                _OPEN_WRITES.discard(tmp)
            _sync_tree(tmp)
            _commit_directory(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_file(target, suffix="", lock=True):
    """Yield a temporary path beside `target` that replaces it only on success.

    Write the file at the yielded path (its name ends with `suffix`, for
    writers that check extensions); when the block ends without an error the
    file is flushed to disk and `os.replace`d onto `target`, so readers see
    the old file or the whole new one, never a partial write. On an error
    the temporary file is removed and `target` is untouched. A folder at
    `target` is refused (`DestinationKindError`).

    `lock=False` when the caller holds a `writer_lock` that covers this
    write (and cleans up after it), as `BackupAndRestore` does.
    """
    target = _resolve(target)
    with writer_lock(target) if lock else contextlib.nullcontext(False) as owner:
        if owner:
            _clean(target, suffix)
        if os.path.isdir(target):
            raise DestinationKindError(f"{target} is a folder; it cannot be replaced by a file.")
        tmp = _new_sibling(target, "tmp", directory=False, suffix=suffix)
        try:
            if os.path.isfile(target):  # like open(target, "w"): an existing file keeps its mode
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            yield tmp
            _fsync(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        _fsync(os.path.dirname(target), directory=True)


@contextlib.contextmanager
def writer_lock(target):
    """Hold `target`'s writer lock (an exclusive `flock` on `.NAME.lock` beside it).

    Blocks while another process writes `target`. Yields True when this call
    took the lock (so no other writer of `target` is alive and the caller may
    remove stale temporaries, e.g. with `remove_stale`); False when this
    process already held it (a nested write) or locks are not available.
    """
    target = _resolve(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.lock")
    with _HELD_GUARD:
        entry = _HELD.get(path)
        if entry is not None:
            entry[0] += 1
    if entry is None:
        fd = _acquire(path)
        with _HELD_GUARD:
            entry = _HELD.setdefault(path, [0, fd])
            entry[0] += 1
        owner = fd is not None and entry[1] == fd
        if fd is not None and not owner:  # another thread registered first (locks unavailable to it)
            os.close(fd)
    else:
        owner = False
    try:
        yield owner
    finally:
        _release(path)


def remove_stale(folder, name_pattern, suffix=""):
    """Remove our temporaries of the targets in `folder` whose names fully match
    the regular expression `name_pattern`. Call it only while holding the
    writer lock that every writer of those targets holds."""
    for path in temporaries(folder, name_pattern, suffix):
        _remove(path)


def temporaries(folder, name_pattern, suffix=""):
    """Paths of `.NAME.tmp-*` / `.NAME.old-*` entries (with `suffix`) in `folder`
    for names fully matching `name_pattern`, but not those this process is
    writing."""
    pattern = re.compile(rf"\.(?:{name_pattern})\.(?:tmp|old)-{_TOKEN}{re.escape(suffix)}")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    paths = [os.path.join(folder, n) for n in sorted(names) if pattern.fullmatch(n)]
    return [p for p in paths if p not in _OPEN_WRITES]


def recover(target):
    """Bring back a folder an interrupted two-rename commit left missing.

    When `target` is missing and a `.NAME.old-*` of ours lies beside it, the
    old folder is the last complete version: once no writer of `target` is
    alive (the writer lock is free) it is renamed back, with a warning, and
    the other leftovers are removed. Returns whether `target` exists. Does
    nothing where the folder cannot be written (read-only parent).
    """
    target = _resolve(target)
    if os.path.lexists(target):
        return True
    parent, name = os.path.split(target)
    if not any(p.startswith(os.path.join(parent, f".{name}.old-")) for p in temporaries(parent, re.escape(name))):
        return False
    try:
        with writer_lock(target) as owner:
            if owner:
                _clean(target)
    except OSError:
        return False
    return os.path.lexists(target)


def _resolve(target):
    """The absolute path written: a symlink to a folder keeps pointing at it."""
    return os.path.realpath(os.fspath(target))


def _acquire(path):
    """A descriptor holding an exclusive `flock` on `path` (created if missing),
    or None where locks are not available."""
    if fcntl is None:
        return None
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                return None
            raise
        # The holder before us may have removed the file after we opened it:
        # then the lock is on a file no one else will open; take the new one.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _release(path):
    with _HELD_GUARD:
        entry = _HELD[path]
        entry[0] -= 1
        if entry[0]:
            return
        del _HELD[path]
    if entry[1] is not None:
        with contextlib.suppress(OSError):
            os.remove(path)  # still holding the lock: whoever opened this file retries
        os.close(entry[1])


def _clean(target, suffix=""):
    """With `target`'s writer lock held: restore a missing folder from its
    `.old-*` and remove the other leftovers of dead writers."""
    parent, name = os.path.split(target)
    stale = temporaries(parent, re.escape(name), suffix)
    if not os.path.lexists(target):
        olds = [p for p in stale if os.path.basename(p).startswith(f".{name}.old-") and os.path.isdir(p)]
        if olds:
            last = max(olds, key=os.path.getmtime)
            os.rename(last, target)
            _fsync(parent, directory=True)
            stale.remove(last)
            warnings.warn(
                f"{target} was missing after an interrupted write; restored its last complete version "
                f"from {os.path.basename(last)}.",
                stacklevel=3,
            )
    for path in stale:
        _remove(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _new_sibling(target, kind, directory, suffix=""):
    """Create `.NAME.<kind>-XXXXXXXX<suffix>` beside `target` with the modes of a
    plain `os.mkdir` / `open(path, "w")` (umask applied, unlike `tempfile`'s 0700 / 0600)."""
    parent, name = os.path.split(target)
    while True:
        path = os.path.join(parent, f".{name}.{kind}-{secrets.token_hex(4)}{suffix}")
        try:
            if directory:
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _commit_directory(tmp, target):
    """Make the complete folder `tmp` visible as `target`."""
    parent, name = os.path.split(target)
    if not os.path.isdir(target):
        os.rename(tmp, target)
        _fsync(parent, directory=True)
    elif _exchange(tmp, target):
        _fsync(parent, directory=True)
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous version
    else:
        old = os.path.join(parent, f".{name}.old-{secrets.token_hex(4)}")
        os.rename(target, old)
        os.rename(tmp, target)  # a kill before this line leaves `old`: see `recover`
        _fsync(parent, directory=True)
        shutil.rmtree(old, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _renameat2():
    """glibc's `renameat2` (2.28+), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a, b):
    """Swap two existing paths in one atomic step; False where not supported."""
    function = _renameat2() if _USE_EXCHANGE else None
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # old kernel or a file system without RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), b)


def _sync_tree(folder):
    """Flush every file and folder under `folder` to disk before it is committed."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root, directory=True)


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
