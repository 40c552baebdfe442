"""Search a folder of images by text or by image, and find near duplicates.

    from keras_siglip.search import ImageIndex

    index, report = ImageIndex.update("photos/")   # embeds new and changed files only
    index.search("a red car at night", k=20)       # [(path, probability), ...] best first
    index.search(image="query.jpg", k=20)          # [(path, cosine similarity), ...]
    index.duplicates(threshold=0.95)               # [[path, path, ...], ...] near-duplicate groups

The index is one SQLite file (by default `.keras_siglip_index.sqlite` inside the
folder): per image its path relative to the folder, size, modification time
and L2-normalised embedding (float32), and which model made the embeddings.
SQLite because every batch of new embeddings is one transaction: an
interrupted run (Ctrl-C, SIGKILL, power loss) leaves the index as it was after
its last finished batch, never half-written, and the next run goes on from
there; rows are added, replaced and dropped per file, so an update embeds only
what changed. It comes with Python. Search is exact (one matrix product over
all embeddings), so an updated index ranks exactly as a freshly built one; an
approximate vector index would only pay off beyond millions of images.

Text queries rank by the model's own sigmoid probability that the text
describes the image, `sigmoid(exp(t) * cos + b)` (SigLIP's pairwise
likelihood); image queries rank by cosine similarity, which is what two
images' embeddings share (the model was not trained to give an image-image
probability).
"""

import contextlib
import dataclasses
import json
import os
import sqlite3
import sys

import numpy as np
import scipy.special

DEFAULT_PRESET = "siglip2_shapes_tiny"
INDEX_NAME = ".keras_siglip_index.sqlite"
FORMAT = "keras_siglip.image_index.v1"
# A fixed text whose embedding identifies the model: an index refuses a model whose
# embedding of it differs (other weights under the same preset name or path).
_PROBE_TEXT = "a photo"
_PROBE_ATOL = 1e-3  # far above cross-backend differences (~1e-6), far below other weights'


class ImageIndexError(ValueError):
    """An index that cannot be used as asked (missing, another model, not an index)."""


@dataclasses.dataclass
class UpdateReport:
    """What one `ImageIndex.update` did. `skipped`: (path, reason) of the files
    read this time that look like images but could not be read; the index
    remembers them and tries again when they change."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def embedded(self):
        return self.added + self.updated

    def __str__(self):
        return (f"{self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.unchanged} unchanged, {len(self.skipped)} unreadable")


def image_extensions():
    """File name endings PIL can open (lower case, with the dot)."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def scan_folder(folder):
    """`{relative path: (size, mtime_ns)}` of every file under `folder` (recursive,
    symbolic links to files followed, to folders not) whose ending PIL reads."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise ImageIndexError(f"{folder} is not a folder.")
    extensions = image_extensions()
    found = {}

    def on_error(error):
        print(f"warning: cannot list {error.filename}: {error.strerror}", file=sys.stderr)

    for parent, dirs, files in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = os.path.join(parent, name)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling link, or removed meanwhile
                continue
            found[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def default_index_path(folder):
    return os.path.join(os.path.abspath(folder), INDEX_NAME)


def resolve_index(index_or_folder):
    """An index file, or a folder's default index; a clear error if there is none."""
    path = os.path.abspath(os.fspath(index_or_folder))
    if os.path.isdir(path):
        index = default_index_path(path)
        if not os.path.exists(index):
            raise ImageIndexError(f"{path} has no index ({INDEX_NAME}); build it with `keras-siglip index {path}` "
                                  "or ImageIndex.update.")
        return index
    if not os.path.exists(path):
        raise ImageIndexError(f"no such index or folder: {path}")
    return path


# Batches of the image tower after which compiling it pays off. Tiny shapes model, batch 16,
# CPU: JAX runs eagerly op by op and compiles each op for each new shape (6 s for the first
# batch eagerly, 1 s compiled); TensorFlow: 0.3 s per batch eagerly, 0.1 s after a 2 s XLA
# compilation; torch: 74 ms eagerly, 25 ms after a 5.5 s export.
_COMPILE_AFTER_BATCHES = {"jax": 0, "tensorflow": 10, "torch": 100}


def compile_by_default(num_images, batch_size):
    """Whether embedding `num_images` runs the image tower compiled by default."""
    import keras

    return -(-num_images // batch_size) >= _COMPILE_AFTER_BATCHES.get(keras.config.backend(), 0)


class Embedder:
    """A preset's two towers as the index uses them: image and text embeddings,
    temperature and bias. `compiled`: the image tower runs compiled (indexing
    many batches; one compilation, as batches are padded to `batch_size`),
    else eagerly (a query: compiling would cost more than it saves)."""

    def __init__(self, preset, max_num_patches=None, batch_size=32, compiled=False):
        import keras
        from keras import ops

        from keras_siglip.layers.contrastive import l2_normalize
        from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
        from keras_siglip.utils.compiled_forward import compiled_forward

        self.preset = preset
        self.backbone = SigLIPBackbone.from_preset(preset)
        self.preprocessor = SigLIPPreprocessor.from_preset(preset)
        self.naflex = getattr(self.backbone.vision_encoder, "input_format", "images") == "naflex"
        if max_num_patches is not None:
            if not self.naflex:
                raise ImageIndexError(f"{preset} is a fixed-resolution model; a number of NaFlex patches applies to "
                                      "NaFlex models only.")
            self.preprocessor.image_converter.max_num_patches = int(max_num_patches)
        self.max_num_patches = self.preprocessor.image_converter.max_num_patches if self.naflex else None
        self.batch_size = batch_size
        vision, text = self.backbone.vision_encoder, self.backbone.text_encoder
        self.compiled = compiled
        self._forward = compiled_forward(vision) if compiled else lambda x: vision(x, training=False)
        eager_text = keras.config.backend() != "jax"  # JAX runs eagerly op by op, compiling each op
        self._text_forward = (lambda x: text(x, training=False)) if eager_text else compiled_forward(text)
        self._normalize = lambda x: ops.convert_to_numpy(l2_normalize(x)).astype(np.float32)
        self.embedding_dim = self.backbone.embedding_dim
        self.temperature = float(ops.convert_to_numpy(self.backbone.temperature))
        self.bias = float(ops.convert_to_numpy(self.backbone.bias))

    def embed_texts(self, texts):
        from keras import ops

        from keras_siglip.utils.tensors import check_token_ids

        token_ids = ops.convert_to_numpy(self.preprocessor.pack_texts(list(texts)))
        check_token_ids(token_ids, self.backbone.text_encoder.vocabulary_size)
        return self._normalize(self._text_forward(token_ids))

    def probe(self):
        return self.embed_texts([_PROBE_TEXT])[0]

    def embed_files(self, paths, progress=True):
        """Image files -> `(N, D)` embeddings, `batch_size` at a time; an unreadable
        file raises `ImageReadError` naming it."""
        from tqdm.auto import tqdm

        from keras_siglip.utils.images import read_image

        chunks = [np.zeros((0, self.embedding_dim), np.float32)]
        with tqdm(total=len(paths), unit="image", desc="embedding", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, len(paths), self.batch_size):
                batch = paths[start:start + self.batch_size]
                chunks.append(self.embed_images([read_image(p) for p in batch]))
                bar.update(len(batch))
        return np.concatenate(chunks)

    def embed_images(self, images):
        """uint8 images of any sizes (at most `batch_size`) -> `(N, D)` embeddings."""
        from keras import ops

        inputs = [None] * len(images)
        by_shape = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for positions in by_shape.values():  # one converter call per image size
            converted = self.preprocessor.model_images(np.stack([images[i] for i in positions]))
            converted = {k: ops.convert_to_numpy(v) for k, v in converted.items()}
            for j, i in enumerate(positions):
                inputs[i] = {k: v[j] for k, v in converted.items()}
        batch = {k: np.stack([x[k] for x in inputs]) for k in inputs[0]}
        pad = self.batch_size - len(images) if self.compiled else 0
        if pad > 0:  # a fixed batch shape: one compiled program for every batch
            batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}
        x = batch["images"] if list(batch) == ["images"] else batch
        return self._normalize(self._forward(x))[: len(images)]


class ImageIndex:
    """An image index file: embeddings of a folder's images and the model that made them."""

    def __init__(self, path, batch_size=32):
        """Opens an existing index file (`resolve_index` takes a folder too)."""
        self.path = resolve_index(path)
        self.batch_size = batch_size
        self._connection = _connect(self.path)
        self._meta = self._read_meta()
        self._model = None
        self._embeddings = None

    @property
    def root(self):
        """The absolute folder whose images the index holds."""
        return self._meta["root"]

    @property
    def preset(self):
        return self._meta["preset"]

    @property
    def max_num_patches(self):
        return self._meta["max_num_patches"]

    def __len__(self):
        return self._connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def close(self):
        self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def update(cls, folder, index_path=None, preset=None, max_num_patches=None, batch_size=32, progress=True,
               compiled=None):
        """Creates or updates the index of `folder`; returns `(index, UpdateReport)`.

        New files and files whose size or modification time changed are
        embedded, in batches of `batch_size`, each batch committed as it is
        done; files gone from the folder are dropped. An existing index keeps
        its model: `preset` / `max_num_patches` may be left out, and a
        different one raises (its embeddings would not be comparable).

        Args:
            folder: the folder of images (searched recursively).
            index_path: the index file; default `folder/.keras_siglip_index.sqlite`.
            preset: a SigLIP / SigLIP 2 preset (name, folder or URI); default
                the index's, or `DEFAULT_PRESET` for a new index.
            max_num_patches: NaFlex presets: patches per image (default the
                preset's preprocessor's).
            batch_size: images embedded per forward pass.
            progress: show a progress bar on standard error.
            compiled: run the image tower compiled (`compiled_forward`); by
                default where that pays for its compilation (`compile_by_default`).
        """
        folder = os.path.abspath(os.fspath(folder))
        files = scan_folder(folder)
        index_path = os.path.abspath(os.fspath(index_path)) if index_path else default_index_path(folder)
        if os.path.isdir(index_path):
            raise ImageIndexError(f"the index path {index_path} is a folder; give a file name.")
        if not os.path.isdir(os.path.dirname(index_path)):
            raise ImageIndexError(f"the folder of the index {index_path} does not exist.")
        meta = None
        if os.path.exists(index_path) and os.path.getsize(index_path) > 0:
            with contextlib.closing(_connect(index_path)) as connection:
                meta = _read_meta(connection, index_path)
            preset = _same_setting(meta, "preset", preset, index_path)
            max_num_patches = _same_setting(meta, "max_num_patches", max_num_patches, index_path)
            if meta["root"] != folder:
                raise ImageIndexError(f"{index_path} indexes {meta['root']}, not {folder}.")
        preset = preset or DEFAULT_PRESET
        preset = os.path.abspath(preset) if _is_local_path(preset) else preset
        models = []

        def model(todo=0):  # loaded when there is something to embed (or a new index to describe)
            if not models:
                use_compiled = compile_by_default(todo, batch_size) if compiled is None else compiled
                models.append(Embedder(preset, max_num_patches, batch_size, compiled=use_compiled))
                if meta is not None:
                    _check_model(meta, models[0], index_path)
            return models[0]

        if meta is None:
            model(len(files))  # before the file exists: a preset that fails to load leaves no index behind
        with contextlib.closing(_connect(index_path)) as connection:
            if meta is None:
                _create(connection, folder, model())
            report = _sync(connection, files, folder, model, progress)
        index = cls(index_path, batch_size=batch_size)
        index._model = models[0] if models else None
        return index, report

    # -- querying ---------------------------------------------------------------------------

    def embeddings(self):
        """`(paths, (N, D) float32 embeddings)`, paths absolute, in path order
        (read once per `ImageIndex`: open it again to see a later update)."""
        if self._embeddings is None:
            self._embeddings = self._read_embeddings()
        return self._embeddings

    def _read_embeddings(self):
        rows = self._connection.execute("SELECT path, embedding FROM images ORDER BY path").fetchall()
        dim = self._meta["embedding_dim"]
        if not rows:
            return [], np.zeros((0, dim), np.float32)
        paths, blobs = zip(*rows)
        matrix = np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), dim)
        return [os.path.join(self.root, p) for p in paths], matrix

    def model(self):
        """The index's model, loaded on first use and checked to be the one that built it."""
        if self._model is None:
            model = Embedder(self.preset, self.max_num_patches, self.batch_size,
                           compiled=compile_by_default(1, self.batch_size))
            _check_model(self._meta, model, self.path)
            self._model = model
        return self._model

    def search(self, text=None, image=None, k=20):
        """The `k` best images for a text (by sigmoid probability) or an image
        (a file path or uint8 `(H, W, 3)` array; by cosine similarity).

        Returns:
            list of `(absolute path, score)`, best first (ties: by path).
        """
        if (text is None) == (image is None):
            raise ValueError("search takes a text or an image (one of the two).")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        paths, matrix = self.embeddings()
        model = self.model()
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the search text must be a non-empty string.")
            query = model.embed_texts([text])[0]
            scores = scipy.special.expit(model.temperature * (matrix @ query) + model.bias)
        else:
            from keras_siglip.utils.images import read_image

            pixels = read_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image)
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
                raise ValueError(f"a query image must be uint8 (H, W, 3); got {pixels.dtype} {pixels.shape}.")
            scores = matrix @ model.embed_images([pixels])[0]
        order = _ranking(scores, k)
        return [(paths[i], float(scores[i])) for i in order]

    def duplicates(self, threshold=0.95, block_size=4096):
        """Groups of near-duplicate images: connected components of the graph
        whose edges join images with cosine similarity >= `threshold`.

        Returns:
            list of groups (lists of absolute paths, sorted), largest first,
            then by first path; images without a near duplicate are left out.
        """
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in (0, 1]; got {threshold!r}.")
        paths, matrix = self.embeddings()
        parent = list(range(len(paths)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for start in range(0, len(paths), block_size):  # (block, N) similarities at a time
            similar = matrix[start:start + block_size] @ matrix.T >= threshold
            for i, j in zip(*np.nonzero(similar)):
                a, b = find(start + int(i)), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
        groups = {}
        for i in range(len(paths)):
            groups.setdefault(find(i), []).append(paths[i])
        found = [sorted(g) for g in groups.values() if len(g) > 1]
        return sorted(found, key=lambda g: (-len(g), g[0]))

    def stale(self):
        """How many files under the root were added, changed or removed since the last update."""
        files, known = scan_folder(self.root), _known_files(self._connection)
        return sum(files.get(p) != known.get(p) for p in set(files) | set(known))

    def _read_meta(self):
        return _read_meta(self._connection, self.path)


def _ranking(scores, k):
    """The indices of the `k` best scores, best first; equal scores keep the (path)
    order of the rows. A partition finds the k-th best score, and only the rows at
    least as good (ties at the boundary included) are sorted."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    kth_best = -np.partition(-scores, k - 1)[k - 1]
    candidates = np.flatnonzero(scores >= kth_best)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:k]


def _is_local_path(preset):
    return os.path.sep in preset or os.path.exists(preset)


def _same_setting(meta, key, given, index_path):
    if given is None or meta[key] is None:  # None: a fixed-resolution model, which refuses patch counts itself
        return meta[key] if given is None else given
    value = os.path.abspath(given) if key == "preset" and _is_local_path(given) else given
    if value != meta[key]:
        raise ImageIndexError(f"{index_path} was built with {key} {meta[key]!r}, not {given!r}: its embeddings "
                              f"would not compare. Use {meta[key]!r}, or write a new index elsewhere.")
    return meta[key]


def _check_model(meta, model, index_path):
    probe = model.probe()
    stored = np.asarray(meta["probe"], np.float32)
    if probe.shape != stored.shape or not np.allclose(probe, stored, rtol=0, atol=_PROBE_ATOL):
        raise ImageIndexError(f"the model of preset {meta['preset']!r} is not the one that built {index_path} "
                              "(its weights changed): rebuild the index.")


def _connect(path):
    try:
        return sqlite3.connect(path, timeout=30)
    except sqlite3.DatabaseError as error:
        raise ImageIndexError(f"cannot open the index {path} ({error}).") from None


def _create(connection, folder, model):
    """The tables and the model's description, in one transaction (all or nothing)."""
    probe = model.probe()
    meta = {"format": FORMAT, "root": folder, "preset": model.preset, "max_num_patches": model.max_num_patches,
            "embedding_dim": len(probe), "probe": probe.tolist()}
    with connection:
        connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("CREATE TABLE images (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                           "mtime_ns INTEGER NOT NULL, embedding BLOB NOT NULL)")
        connection.execute("CREATE TABLE unreadable (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                           "mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL)")
        connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])


def _read_meta(connection, path):
    try:
        meta = {k: json.loads(v) for k, v in connection.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, json.JSONDecodeError) as error:
        raise ImageIndexError(f"{path} is not a keras-siglip image index ({error}).") from None
    if meta.get("format") != FORMAT:
        raise ImageIndexError(f"{path} is not a keras-siglip image index (format {meta.get('format')!r}).")
    return meta


def _known_files(connection):
    """`{path: (size, mtime_ns)}` of the indexed and the unreadable files."""
    return {p: (size, mtime) for table in ("images", "unreadable")
            for p, size, mtime in connection.execute(f"SELECT path, size, mtime_ns FROM {table}")}


def _sync(connection, files, folder, model, progress):
    """Brings the tables in line with `files` (`{path: (size, mtime_ns)}`);
    `model(number of images)` gives the model when something must be embedded. Returns an UpdateReport."""
    indexed = {p for (p,) in connection.execute("SELECT path FROM images")}
    known = _known_files(connection)
    gone = [(p,) for p in set(known) - set(files)]
    with connection:
        connection.executemany("DELETE FROM images WHERE path = ?", gone)
        connection.executemany("DELETE FROM unreadable WHERE path = ?", gone)
    report = UpdateReport(removed=len(indexed - set(files)))
    todo = [p for p in sorted(files) if known.get(p) != files[p]]
    report.unchanged = len(files) - len(todo)
    if not todo:
        return report
    from tqdm.auto import tqdm

    from keras_siglip.utils.images import ImageReadError, read_image

    batch_size = model(len(todo)).batch_size
    with tqdm(total=len(todo), unit="image", desc="embedding", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(todo), batch_size):
            read, images, failed = [], [], []
            for path in todo[start:start + batch_size]:
                try:
                    images.append(read_image(os.path.join(folder, path)))
                    read.append(path)
                except ImageReadError as error:
                    failed.append((path, str(error)))
            embeddings = model().embed_images(images) if images else []
            with connection:  # one transaction per batch: a kill loses at most this batch
                connection.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                                       [(p, *files[p], e.tobytes()) for p, e in zip(read, embeddings)])
                connection.executemany("DELETE FROM unreadable WHERE path = ?", [(p,) for p in read])
                connection.executemany("INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?)",
                                       [(p, *files[p], reason) for p, reason in failed])
                connection.executemany("DELETE FROM images WHERE path = ?", [(p,) for p, _ in failed])
            report.updated += sum(p in indexed for p in read)
            report.added += sum(p not in indexed for p in read)
            report.skipped += [(os.path.join(folder, p), reason) for p, reason in failed]
            bar.update(len(read) + len(failed))
    return report
