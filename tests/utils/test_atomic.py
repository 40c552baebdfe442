"""Atomic writes (`keras_siglip.utils.atomic`): modes follow the umask, a file is
never replaced by a folder (or a folder by a file), merge vs replace-whole,
stale temporaries of dead writers are removed while a live writer's are kept,
and a folder an interrupted two-rename commit left under `.NAME.old-*` comes back.
The SIGKILL loops are in integration_tests/test_interrupted_writes.py."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from keras_siglip.utils import atomic
from keras_siglip.utils.atomic import DestinationKindError, atomic_directory, atomic_file, recover
from keras_siglip.utils.preset import check_preset


def write(folder, name, text="x"):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def read(folder, name):
    with open(os.path.join(folder, name)) as f:
        return f.read()


def mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.fixture(params=[True, False], ids=["exchange", "two_renames"])
def commit(request, monkeypatch):
    """Both commits of a folder: the atomic swap and the two-rename fallback."""
    if request.param and not exchange_supported(request.getfixturevalue("tmp_path")):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    monkeypatch.setattr(atomic, "_USE_EXCHANGE", request.param)
    return request.param


def exchange_supported(folder):
    a, b = folder / ".probe_a", folder / ".probe_b"
    a.mkdir(), b.mkdir()
    try:
        return atomic._exchange(str(a), str(b))
    finally:
        a.rmdir(), b.rmdir()


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_modes_follow_the_umask(tmp_path, umask):
    """Old code: `tempfile.mkdtemp` / `mkstemp` gave 0700 folders and 0600 files whatever the umask."""
    previous = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "preset") as tmp:
            write(tmp, "config.json")
        with atomic_file(tmp_path / "weights.npy", suffix=".npy") as tmp:
            write(os.path.dirname(tmp), os.path.basename(tmp))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "preset") == 0o777 & ~umask
    assert mode(tmp_path / "preset" / "config.json") == 0o666 & ~umask
    assert mode(tmp_path / "weights.npy") == 0o666 & ~umask


def test_an_existing_file_keeps_its_mode(tmp_path):
    """Like `open(path, "w")`: rewriting a file does not change who may read it."""
    (tmp_path / "f.json").write_text("{}")
    os.chmod(tmp_path / "f.json", 0o640)
    with atomic_file(tmp_path / "f.json") as tmp:
        write(os.path.dirname(tmp), os.path.basename(tmp), "[]")
    assert mode(tmp_path / "f.json") == 0o640
    assert (tmp_path / "f.json").read_text() == "[]"


def test_a_file_is_never_replaced_by_a_folder(tmp_path):
    """Old code: the file was silently replaced and moved to a `.NAME.old-*` never removed."""
    (tmp_path / "preset").write_text("my notes")
    with pytest.raises(DestinationKindError, match="is a file"):
        with atomic_directory(tmp_path / "preset") as tmp:
            write(tmp, "config.json")
    assert (tmp_path / "preset").read_text() == "my notes"
    assert leftovers(tmp_path) == []
    assert isinstance(DestinationKindError("x"), ValueError)


def test_a_folder_is_never_replaced_by_a_file(tmp_path):
    (tmp_path / "out").mkdir()
    write(tmp_path / "out", "keep")
    with pytest.raises(DestinationKindError, match="is a folder"):
        with atomic_file(tmp_path / "out"):
            pass
    assert os.listdir(tmp_path / "out") == ["keep"] and leftovers(tmp_path) == []


def test_merge_keeps_old_files_replace_does_not(tmp_path, commit):
    target = tmp_path / "preset"
    with atomic_directory(target) as tmp:
        write(tmp, "tokenizer.json", "old")
        write(tmp, "model.weights.h5", "old")
    with atomic_directory(target) as tmp:  # the keras-hub way: a second save adds to the folder
        write(tmp, "preprocessor.json", "new")
    assert sorted(os.listdir(target)) == ["model.weights.h5", "preprocessor.json", "tokenizer.json"]
    with atomic_directory(target, merge=False) as tmp:
        assert os.listdir(tmp) == []
        write(tmp, "model.weights.h5", "new")
    assert os.listdir(target) == ["model.weights.h5"] and read(target, "model.weights.h5") == "new"
    assert leftovers(tmp_path) == []


def test_an_error_in_the_block_leaves_the_target_as_it_was(tmp_path, commit):
    target = tmp_path / "preset"
    with atomic_directory(target) as tmp:
        write(tmp, "a", "1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, merge=False) as tmp:
            write(tmp, "a", "2")
            raise RuntimeError
    assert read(target, "a") == "1" and leftovers(tmp_path) == []


def test_a_symlink_to_a_folder_keeps_pointing_at_it(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with atomic_directory(tmp_path / "link", merge=False) as tmp:
        write(tmp, "a", "new")
    assert os.path.islink(tmp_path / "link") and read(tmp_path / "real", "a") == "new"
    assert leftovers(tmp_path) == []


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path, commit):
    """Old code: what a killed write left (`.NAME.tmp-*`, here also `mkdtemp`-style
    names of earlier versions) stayed forever."""
    target = tmp_path / "preset"
    with atomic_directory(target) as tmp:
        write(tmp, "a", "1")
    for name in (".preset.tmp-k3j_9xab", ".preset.old-0123abcd", ".preset.lock"):
        (tmp_path / name).mkdir() if "lock" not in name else (tmp_path / name).write_text("")
    write(tmp_path / ".preset.tmp-k3j_9xab", "partial")
    unrelated = (".preset.tmp-notours", ".other.tmp-abcdefgh", ".preset.tmp-abcdefgh.tmp-abcdefgh")
    for name in unrelated:
        (tmp_path / name).mkdir()
    (tmp_path / ".f.npy.tmp-abcdefgh.npy").write_text("partial")
    with atomic_directory(target) as tmp:
        write(tmp, "b", "2")
    with atomic_file(tmp_path / "f.npy", suffix=".npy") as tmp:
        write(os.path.dirname(tmp), os.path.basename(tmp))
    assert sorted(os.listdir(target)) == ["a", "b"]
    assert leftovers(tmp_path) == sorted(unrelated)  # only names of our pattern are touched


# Runs in another process without importing keras: the writer module is stdlib-only.
WRITER = r"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_directory(sys.argv[2], merge=False) as tmp:
    with open(os.path.join(tmp, "writer"), "w") as f:
        f.write("theirs")
    print(tmp, flush=True)
    sys.stdin.readline()
"""


def start_writer(target):
    """Another process in the middle of writing `target`; returns it and its temporary folder."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, atomic.__file__, str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    return process, process.stdout.readline().strip()


def write_in_thread(target, text):
    def run():
        with atomic_directory(target, merge=False) as tmp:
            write(tmp, "ours", text)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_live_writers_temporary_is_kept_a_dead_ones_removed(tmp_path):
    target = tmp_path / "preset"
    writer, theirs = start_writer(target)
    try:
        ours = write_in_thread(target, "1")
        time.sleep(0.5)
        # Waiting for the live writer: its temporary is untouched.
        assert ours.is_alive() and read(theirs, "writer") == "theirs"
        writer.communicate("\n", timeout=30)
        ours.join(30)
        assert not ours.is_alive() and os.listdir(target) == ["ours"]
        assert leftovers(tmp_path) == []

        writer, theirs = start_writer(target)
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        assert os.path.isdir(theirs)  # what the killed writer left
        write_in_thread(target, "2").join(30)
        assert read(target, "ours") == "2" and leftovers(tmp_path) == []
    finally:
        writer.kill()
        writer.wait(30)


def test_nested_writes_of_one_target_in_one_process_do_not_wait(tmp_path):
    """A backup holds the metadata's writer lock around its own atomic writes."""
    target = tmp_path / "training_metadata.json"
    with atomic.writer_lock(target) as owner:
        assert owner
        with atomic.writer_lock(target) as nested:
            assert not nested  # no clean-up: the outer write may have a live temporary
        with atomic_file(target) as tmp:
            write(os.path.dirname(tmp), os.path.basename(tmp), "{}")
    assert leftovers(tmp_path) == []


def interrupted_between_renames(tmp_path):
    """The state a writer killed between the two renames leaves: the target
    missing, the last complete version in `.NAME.old-*`, the new one in `.tmp-*`."""
    target = tmp_path / "preset"
    old, new = tmp_path / ".preset.old-0123abcd", tmp_path / ".preset.tmp-4567efgh"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        write(folder, "config.json", json.dumps({"registered_name": "keras_siglip>SigLIPBackbone", "v": text}))
    (tmp_path / ".preset.lock").write_text("")
    return target


def test_a_missing_folder_is_restored_from_its_old_version_by_the_next_write(tmp_path):
    target = interrupted_between_renames(tmp_path)
    with pytest.warns(UserWarning, match="restored its last complete version"):
        with atomic_directory(target) as tmp:
            assert json.loads(read(tmp, "config.json"))["v"] == "old"  # merged from the restored folder
            write(tmp, "b")
    assert sorted(os.listdir(target)) == ["b", "config.json"] and leftovers(tmp_path) == []


def test_a_missing_folder_is_restored_when_read(tmp_path):
    """`from_preset` checks the name with `check_preset`, which recovers it."""
    target = interrupted_between_renames(tmp_path)
    with pytest.warns(UserWarning, match="restored"):
        assert check_preset(str(target)) == str(target)
    assert json.loads(read(target, "config.json"))["v"] == "old" and leftovers(tmp_path) == []
    assert recover(tmp_path / "nothing") is False


def test_a_reader_waits_for_a_live_writer_instead_of_restoring(tmp_path):
    """A target missing while its writer lives (between its renames) is not
    restored under the writer's feet: `recover` waits for the writer's lock."""
    target = tmp_path / "preset"
    writer, theirs = start_writer(target)
    try:
        (tmp_path / ".preset.old-0123abcd").mkdir()  # as if the live writer had renamed the target away
        result = []
        reader = threading.Thread(target=lambda: result.append(recover(target)))
        reader.start()
        time.sleep(0.5)
        assert reader.is_alive() and os.path.isdir(tmp_path / ".preset.old-0123abcd")
        writer.communicate("\n", timeout=30)
        reader.join(30)
        assert result == [True] and os.listdir(target) == ["writer"]
    finally:
        writer.kill()
        writer.wait(30)


def test_readers_never_see_the_folder_missing_with_the_atomic_swap(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    target = tmp_path / "preset"
    with atomic_directory(target) as tmp:
        write(tmp, "a", "0")
    done, missing = threading.Event(), []

    def watch():
        while not done.is_set():
            if not os.path.isdir(target):
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(100):
            with atomic_directory(target, merge=False) as tmp:
                write(tmp, "a", str(i))
    finally:
        done.set()
        watcher.join()
    assert not missing and read(target, "a") == "99"
