"""keras_siglip.search and `keras-siglip index | search | dedup`: incremental
updates, exact equality with a fresh index, a numpy recomputation of the
scores, interruption, near duplicates and the errors a user meets."""

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, run_cli

PRESET = "siglip2_shapes_tiny"
NUM_IMAGES = 60


def write_shapes(folder, count, seed, prefix="img"):
    """`count` shapes images (64 px PNGs, every third in a subfolder); returns their paths."""
    from keras_siglip.data import shapes

    data = shapes.ShapesDataset(count, seed=seed, image_size=64).arrays()
    paths = []
    for i, image in enumerate(data["images"]):
        path = folder / ("sub" if i % 3 == 0 else "") / f"{prefix}_{seed}_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(path)
        paths.append(path)
    return paths


def model_scores(folder_paths, text):
    """Independent of the index: the public backbone API's sigmoid probabilities of `text` for each file."""
    from keras import ops

    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
    from keras_siglip.utils.images import read_image

    backbone, preprocessor = SigLIPBackbone.from_preset(PRESET), SigLIPPreprocessor.from_preset(PRESET)
    images = np.stack([read_image(p) for p in folder_paths])
    image_emb = ops.convert_to_numpy(backbone.encode_images(preprocessor.model_images(images)["images"]))
    text_emb = ops.convert_to_numpy(backbone.encode_texts(preprocessor.pack_texts([text])))[0]
    logits = float(ops.convert_to_numpy(backbone.temperature)) * image_emb @ text_emb + float(
        ops.convert_to_numpy(backbone.bias))
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of shapes images, an unreadable file and a text file, and its index."""
    from keras_siglip.search import ImageIndex

    folder = tmp_path_factory.mktemp("photos")
    write_shapes(folder, NUM_IMAGES, seed=0)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    index, report = ImageIndex.update(folder, preset=PRESET, batch_size=16, progress=False)
    assert (report.added, report.updated, report.removed, len(report.skipped)) == (NUM_IMAGES, 0, 0, 1)
    assert "broken.jpg" in report.skipped[0][0] and len(index) == NUM_IMAGES
    return folder


def test_scores_equal_a_numpy_recomputation(photos):
    from keras_siglip.search import ImageIndex

    with ImageIndex(photos) as index:
        results = index.search("a red circle", k=NUM_IMAGES + 5)
    assert len(results) == NUM_IMAGES
    paths = [p for p, _ in results]
    expected = model_scores(paths, "a red circle")
    np.testing.assert_allclose([s for _, s in results], expected, rtol=0, atol=1e-6)
    assert np.all(np.diff(expected) <= 1e-6), "ranked best first"
    # k keeps the best k.
    with ImageIndex(photos) as index:
        assert index.search("a red circle", k=5) == results[:5]


def test_an_image_query_ranks_by_cosine_and_finds_itself_first(photos):
    from keras_siglip.search import ImageIndex

    query = sorted(photos.rglob("*.png"))[7]
    with ImageIndex(photos) as index:
        (best, similarity), *rest = index.search(image=str(query), k=10)
        paths, matrix = index.embeddings()
    assert best == str(query) and similarity == pytest.approx(1.0, abs=1e-5)
    row = matrix[paths.index(str(query))]
    np.testing.assert_allclose([s for _, s in rest], [matrix[paths.index(p)] @ row for p, _ in rest], atol=1e-6)
    assert all(s <= similarity for _, s in rest)


def test_an_update_embeds_exactly_the_new_and_changed_files_and_equals_a_fresh_index(photos, tmp_path, monkeypatch):
    from keras_siglip import search

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)  # the index file is copied too: its paths are relative
    os.remove(folder / search.INDEX_NAME)
    search.ImageIndex.update(folder, preset=PRESET, batch_size=16, progress=False)
    files = sorted(folder.rglob("*.png"))
    changed = files[:4]
    for path in changed:  # new content, new size and time
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(30).save(path)
    for path in files[10:13]:
        path.unlink()
    added = write_shapes(folder, 5, seed=1, prefix="new")
    (folder / "broken.jpg").touch()  # unchanged content, new time: tried again, still unreadable

    embedded = []
    original = search.Embedder.embed_images
    monkeypatch.setattr(search.Embedder, "embed_images",
                        lambda self, images: embedded.extend(images) or original(self, images))
    # Compiled here, eagerly for the fresh index below: the same embeddings either way.
    index, report = search.ImageIndex.update(folder, batch_size=16, progress=False, compiled=True)
    assert index._model.compiled
    assert (report.added, report.updated, report.removed, len(report.skipped)) == (5, 4, 3, 1)
    assert len(embedded) == 9 and report.unchanged == NUM_IMAGES - 4 - 3
    assert len(index) == NUM_IMAGES - 3 + 5
    fresh_path = tmp_path / "fresh.sqlite"
    fresh, _ = search.ImageIndex.update(folder, index_path=fresh_path, preset=PRESET, batch_size=16, progress=False,
                                        compiled=False)
    for query in ({"text": "two blue squares"}, {"image": str(added[0])}):
        updated_results, fresh_results = index.search(k=100, **query), fresh.search(k=100, **query)
        assert [p for p, _ in updated_results] == [p for p, _ in fresh_results]
        np.testing.assert_allclose([s for _, s in updated_results], [s for _, s in fresh_results], atol=1e-6)
    # Nothing changed: nothing is embedded, and no model is even loaded.
    embedded.clear()
    index, report = search.ImageIndex.update(folder, progress=False)
    assert (report.embedded, report.removed, len(report.skipped)) == (0, 0, 0) and embedded == []
    assert index._model is None and index.stale() == 0


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                    reason="one pass: what survives a kill is SQLite's transactions, the same code on every "
                           "backend; a subprocess costs ~40 s")
def test_a_killed_index_run_leaves_a_usable_index_and_the_next_run_finishes_it(tmp_path):
    """SIGKILL after the first committed batch: the index opens, searches, holds whole
    batches only, and the next run embeds exactly the rest."""
    from keras_siglip.search import INDEX_NAME, ImageIndex

    folder = tmp_path / "photos"
    files = write_shapes(folder, 32, seed=2)
    for path in files:  # large files: reading them keeps the run going after the first batch
        Image.open(path).resize((768, 768)).save(path)
    index_path = folder / INDEX_NAME
    command = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    process = subprocess.Popen(  # the installed command, as a user runs it
        [command, "index", str(folder), "--preset", PRESET, "--batch-size", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if index_path.exists() and _rows(index_path) > 0:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = _rows(index_path)
    assert 0 < done < 32 and done % 4 == 0, done
    with ImageIndex(index_path) as index:
        assert len(index) == done and len(index.search("a red circle", k=3)) == 3
        assert index.stale() == 32 - done
    index, report = ImageIndex.update(folder, progress=False)
    assert (report.added, report.unchanged, len(index)) == (32 - done, done, 32)


def _rows(index_path):
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not created yet, or a writer holds the lock
        return 0


def test_near_duplicates_are_grouped(tmp_path):
    from keras_siglip.search import ImageIndex

    folder = tmp_path / "photos"
    originals = write_shapes(folder, 12, seed=3)
    copies = []
    for path in originals[:2]:  # a re-encoded, resized copy of each of two images
        copy = path.with_name(path.stem + "_copy.jpg")
        Image.open(path).resize((80, 80), Image.Resampling.BICUBIC).save(copy, quality=85)
        copies.append(copy)
    index, _ = ImageIndex.update(folder, preset=PRESET, progress=False)
    groups = index.duplicates(threshold=0.995)
    paths, matrix = index.embeddings()
    similarity = matrix @ matrix.T
    for original, copy in zip(originals, copies):
        assert similarity[paths.index(str(original)), paths.index(str(copy))] >= 0.995
        assert any(str(original) in g and str(copy) in g for g in groups), groups
    # The groups are the connected components of the thresholded similarity graph.
    import scipy.sparse.csgraph

    _, labels = scipy.sparse.csgraph.connected_components(similarity >= 0.995, directed=False)
    expected = sorted((sorted(paths[i] for i in np.flatnonzero(labels == c)) for c in set(labels)
                       if np.sum(labels == c) > 1), key=lambda g: (-len(g), g[0]))
    assert groups == expected and len(groups) < len(paths) - 1, "not everything is one group"


def test_naflex_index_takes_its_patch_count_and_keeps_it(tmp_path):
    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor, SigLIPTextEncoder, SigLIPVisionEncoder
    from keras_siglip.search import ImageIndex, ImageIndexError

    tokenizer = SigLIPPreprocessor.from_preset(PRESET).tokenizer
    preset = str(tmp_path / "naflex")
    SigLIPBackbone(
        SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex"),
        SigLIPTextEncoder(tokenizer.vocabulary_size(), 32, 1, 2, 48, sequence_length=8),
    ).save_to_preset(preset)
    SigLIPPreprocessor(tokenizer, NaFlexImageConverter(4, 24), sequence_length=8).save_to_preset(preset)
    folder = tmp_path / "photos"
    paths = write_shapes(folder, 6, seed=4)
    Image.open(paths[0]).resize((96, 32)).save(paths[0])  # another aspect ratio
    index, report = ImageIndex.update(folder, preset=preset, max_num_patches=40, progress=False)
    assert report.added == 6 and index.max_num_patches == 40
    # The embeddings are the backbone's on the converter's 40-patch inputs.
    from keras import ops

    from keras_siglip.utils.images import read_image

    backbone, preprocessor = SigLIPBackbone.from_preset(preset), SigLIPPreprocessor.from_preset(preset)
    inputs = preprocessor.image_converter(read_image(paths[0])[None], max_num_patches=40)
    expected = ops.convert_to_numpy(backbone.encode_images(inputs))[0]
    got = dict(zip(*index.embeddings()))
    np.testing.assert_allclose(got[str(paths[0])], expected, atol=1e-5)
    with pytest.raises(ImageIndexError, match="max_num_patches 40, not 64"):
        ImageIndex.update(folder, preset=preset, max_num_patches=64, progress=False)
    with pytest.raises(ImageIndexError, match="fixed-resolution"):
        ImageIndex.update(folder, index_path=tmp_path / "other.sqlite", preset=PRESET, max_num_patches=64)


def test_changed_weights_under_the_same_preset_path_are_refused(tmp_path):
    from keras_siglip.models import SigLIPBackbone
    from keras_siglip.search import ImageIndex, ImageIndexError
    from keras import ops

    from keras_siglip.presets import SHIPPED_PRESETS

    preset = tmp_path / "model"
    shutil.copytree(SHIPPED_PRESETS[PRESET], preset)
    folder = tmp_path / "photos"
    write_shapes(folder, 3, seed=5)
    index, _ = ImageIndex.update(folder, preset=str(preset), progress=False)
    backbone = SigLIPBackbone.from_preset(str(preset))
    kernel = backbone.text_encoder.trainable_weights[0]
    kernel.assign(ops.multiply(kernel.value, 1.5))
    backbone.save_to_preset(str(preset))
    with pytest.raises(ImageIndexError, match="weights changed"):
        ImageIndex(index.path).search("a red circle")


def test_command_line(photos, capsys, tmp_path):
    from keras_siglip.search import ImageIndex

    status, out, err = run_cli(capsys, "search", str(photos), "a red circle", "-k", "3")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and all(os.path.isfile(line.split("\t")[1]) for line in lines)
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)

    query = sorted(photos.rglob("*.png"))[3]
    status, out, err = run_cli(capsys, "search", str(photos / ".keras_siglip_index.sqlite"), "--image", str(query))
    assert status == 0 and out.splitlines()[0] == f"1.0000\t{query}" and len(out.splitlines()) == 20, err

    status, out, err = run_cli(capsys, "dedup", str(photos), "--threshold", "0.9")
    with ImageIndex(photos) as index:
        groups = index.duplicates(threshold=0.9)
    assert status == 0 and groups and out == "\n\n".join("\n".join(g) for g in groups) + "\n", err

    status, out, err = run_cli(capsys, "index", str(photos))
    assert status == 0 and out.strip().endswith("(0 added, 0 updated, 0 removed, 61 unchanged, 0 unreadable)"), out

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in [
        (("search", str(photos)), ("TEXT", "--image")),
        (("search", str(photos), "x", "--image", str(query)), ("one of the two",)),
        (("search", str(empty), "x"), ("has no index", "keras-siglip index")),
        (("search", str(tmp_path / "nowhere"), "x"), ("no such index or folder",)),
        (("search", str(query), "x"), ("not a keras-siglip image index",)),
        (("dedup", str(photos / "notes.txt")), ("not a keras-siglip image index",)),
        (("index", str(photos), "--preset", "siglip2_base_patch16_224"), ("built with preset", PRESET)),
        (("index", str(query)), ("is not a folder",)),
        (("index", str(photos), "-o", str(empty)), ("is a folder",)),
        (("index", str(empty), "-o", str(tmp_path / "missing" / "i.sqlite")), ("does not exist",)),
        (("index", str(empty), "--preset", "no_such_preset"), ("no_such_preset",)),
        (("search", str(photos), "--image", str(photos / "broken.jpg")), ("broken.jpg",)),
    ]:
        status, out, err = run_cli(capsys, *args)
        assert_one_line_error(status, err, *words)
        assert out == ""
    assert not (empty / ".keras_siglip_index.sqlite").exists(), "a failed first run leaves no index behind"
    for args in (("dedup", str(photos), "--threshold", "1.5"), ("search", str(photos), "x", "-k", "0")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(capsys, *args)
        assert exit_info.value.code == 2


def test_top_k_with_ties_is_the_stable_sort():
    """The partial ranking (partition, then sorting the rows at least as good as the
    k-th) equals a full stable sort, ties at the boundary included."""
    from keras_siglip.search import _ranking

    rng = np.random.default_rng(0)
    for _ in range(500):
        scores = rng.integers(0, 4, int(rng.integers(1, 50))).astype(np.float32)  # many ties
        k = int(rng.integers(1, 60))
        np.testing.assert_array_equal(_ranking(scores, k), np.argsort(-scores, kind="stable")[:k])
