"""Indexing throughput, incremental updates and query latency of `keras_siglip.search`.

    python -m benchmarks.search                     # 2,000 images, 100,000-embedding queries
    python -m benchmarks.search --images 200 --embeddings 10000

1. Index `--images` generated 64 px shapes PNGs with the shipped preset (images/s,
   first run including the model's compilation, and a second timing on a fresh index
   with the model warm), then modify 10, delete 5 and add 20 files: the update must
   embed exactly those 30 and rank as a fresh index of the same folder does.
2. Query latency on `--embeddings` random unit vectors of the shipped model's size and
   of B/16's (768) written to an index: the first query (reading the embeddings from
   SQLite) and later ones (a matrix-vector product, the sigmoid and a stable sort),
   median of 20, excluding the text tower (timed on its own).

Writes `search.json` next to this file; uses whatever KERAS_BACKEND says.
"""

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = "siglip2_shapes_tiny"


def write_images(folder, count, seed, prefix):
    from PIL import Image

    from keras_siglip.data import shapes

    images = shapes.ShapesDataset(count, seed=seed, image_size=64).arrays()["images"]
    paths = []
    for i, image in enumerate(images):
        path = os.path.join(folder, f"{i % 20:02d}", f"{prefix}_{i:05d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(path)
        paths.append(path)
    return paths


def timed(run):
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def indexing(folder, count):
    from PIL import Image

    from keras_siglip.search import INDEX_NAME, ImageIndex

    paths = write_images(folder, count, seed=0, prefix="img")
    cold, (index, report) = timed(lambda: ImageIndex.update(folder, preset=PRESET, progress=True))
    assert report.added == count, report
    os.remove(os.path.join(folder, INDEX_NAME))
    warm, _ = timed(lambda: ImageIndex.update(folder, preset=PRESET, progress=False))
    for path in paths[:10]:
        Image.open(path).rotate(90).save(path)
    for path in paths[10:15]:
        os.remove(path)
    write_images(folder, 20, seed=1, prefix="new")
    update, (index, report) = timed(lambda: ImageIndex.update(folder, progress=False))
    assert (report.added, report.updated, report.removed, report.embedded) == (20, 10, 5, 30), report
    fresh_path = os.path.join(folder, "fresh.sqlite")
    fresh, _ = ImageIndex.update(folder, index_path=fresh_path, preset=PRESET, progress=False)
    same = all(
        [p for p, _ in index.search(k=100, **q)] == [p for p, _ in fresh.search(k=100, **q)]
        for q in ({"text": "a red circle"}, {"text": "two blue squares"}, {"image": paths[20]})
    )
    return {"images": count, "first_run_s": cold, "images_per_s_first_run": count / cold,
            "images_per_s_warm": count / warm, "update_s": update, "update_embedded": report.embedded,
            "update_report": str(report), "updated_ranks_as_fresh": same}


def query_latency(folder, count, dim, model_dim):
    """Latency of `ImageIndex.search` over `count` random embeddings of size `dim`
    (the text tower's own time is measured separately)."""
    from keras_siglip import search

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = os.path.join(folder, f"synthetic_{dim}.sqlite")
    source = os.path.join(folder, search.INDEX_NAME)
    shutil.copy(source, path)
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM images")
        connection.execute("UPDATE meta SET value = ? WHERE key = 'embedding_dim'", (json.dumps(dim),))
        connection.executemany("INSERT INTO images VALUES (?, 0, 0, ?)",
                               ((f"{i // 1000:03d}/{i:06d}.jpg", v.tobytes()) for i, v in enumerate(vectors)))
    connection.close()
    index = search.ImageIndex(path)
    model = index.model()
    query = rng.normal(size=dim).astype(np.float32)
    query /= np.linalg.norm(query)
    model.embed_texts = lambda texts: query[None]  # the text tower is timed below, at the model's size
    first, results = timed(lambda: index.search("a query", k=20))
    later = statistics.median(timed(lambda: index.search("a query", k=20))[0] for _ in range(20))
    assert len(results) == 20
    del model.embed_texts
    text = statistics.median(timed(lambda: model.embed_texts(["a red car at night"]))[0] for _ in range(20))
    return {"embeddings": count, "dim": dim, "first_query_ms": first * 1e3, "query_ms": later * 1e3,
            "text_tower_ms_at_model_size": text * 1e3, "model_dim": model_dim}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--embeddings", type=int, default=100_000)
    parser.add_argument("--out", default=os.path.join(HERE, "search.json"))
    args = parser.parse_args(argv)
    import keras

    with tempfile.TemporaryDirectory() as folder:
        rows = {"indexing": indexing(folder, args.images)}
        print(json.dumps(rows["indexing"], indent=1), flush=True)
        from keras_siglip.search import ImageIndex

        model_dim = ImageIndex(folder).embeddings()[1].shape[1]
        rows["queries"] = [query_latency(folder, args.embeddings, dim, model_dim) for dim in (model_dim, 768)]
        for row in rows["queries"]:
            print(json.dumps(row), flush=True)
    rows["machine"] = {"backend": keras.config.backend(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count()}
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
