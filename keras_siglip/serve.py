"""A local web app: zero-shot labels for an uploaded image, and text search of an index.

    keras-siglip serve [--preset P] [--index INDEX] [--host 127.0.0.1] [--port 8000]

    from keras_siglip.serve import create_app
    app = create_app("siglip2_shapes_tiny", index="photos/")   # an ASGI app (FastAPI)

FastAPI on uvicorn: maintained, the field's usual pair for a Python model server,
and FastAPI's test client exercises the same routes in-process. Routes:

    GET  /                      the page (no external scripts or styles: works offline)
    POST /api/classify          form: image (file), labels (one per line), template
                                -> {"labels": [{"label", "probability"}, ...]} best first
    GET  /api/search?q=TEXT&k=N -> {"results": [{"path", "score", "thumbnail"}, ...]} best first
    GET  /api/thumbnail/{i}     a JPEG thumbnail of the index's i-th image (by number,
                                never by path: the server reads no file outside the index)
    GET  /api/info              the preset, whether an index is loaded and how many images

Bad input (not an image, no labels, a template without `{}`) is a 400 with
`{"error": "..."}`; the model runs one request at a time.
"""

import html
import io
import os
import socket
import threading

DEFAULT_LABELS = ("a red circle", "a blue square", "a green triangle", "a yellow star", "a photo of a dog",
                  "a photo of a cat")
THUMBNAIL_SIZE = 160


def create_app(preset, index=None):
    """The web app of `preset` (a SigLIP / SigLIP 2 preset) and, optionally, an
    image index (file or folder, see `keras_siglip.search`) built with it."""
    try:
        from fastapi import FastAPI, File, Form, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as missing:
        raise ImportError(f"the web app needs FastAPI ({missing}): pip install \"keras-siglip[serve]\"") from None

    from keras_siglip.models import SigLIPZeroShotClassifier
    from keras_siglip.search import Embedder, ImageIndex

    if index is not None:
        index = ImageIndex(index)
        if preset is not None and preset != index.preset:
            raise ValueError(f"the index was built with {index.preset!r}, not {preset!r}; leave --preset out to "
                             "use the index's.")
        preset = index.preset
        index.embeddings()  # read once, before the first query
    embedder = index.model() if index is not None else Embedder(preset)
    lock = threading.Lock()
    classifiers = {}

    app = FastAPI(title="keras-siglip", docs_url=None, redoc_url=None)

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return _PAGE.replace("{{preset}}", html.escape(str(preset))).replace(
            "{{labels}}", html.escape("\n".join(DEFAULT_LABELS))).replace(
            "{{search}}", "" if index is not None else "hidden")

    @app.get("/api/info")
    def info():
        # The embeddings were read at start: the handlers' threads never touch the index's database.
        if index is None:
            return {"preset": preset, "index": None, "images": 0}
        return {"preset": preset, "index": index.path, "images": len(index.embeddings()[0])}

    @app.post("/api/classify")
    def classify(image: UploadFile = File(...), labels: str = Form(...), template: str = Form("{}")):
        names = [line.strip() for line in labels.splitlines() if line.strip()]
        if not names:
            return error(400, "give at least one label (one per line)")
        if len(set(names)) != len(names):
            return error(400, "labels must be different from each other")
        if template.count("{}") != 1:
            return error(400, "the template needs exactly one {} for the label")
        try:
            pixels = _decode(image.file.read(), image.filename)
        except ValueError as problem:
            return error(400, str(problem))
        key = (tuple(names), template)
        with lock:
            if key not in classifiers:
                classifiers.clear()  # one label set at a time: a server up for days stays small
                classifiers[key] = SigLIPZeroShotClassifier(embedder.backbone, embedder.preprocessor,
                                                            class_names=names, templates=(template,))
            ranked = classifiers[key].classify([pixels], top_k=len(names))[0]
        return {"labels": [{"label": label, "probability": float(p)} for label, p in ranked]}

    @app.get("/api/search")
    def search(q: str = "", k: int = 12):
        if index is None:
            return error(400, "no index: start the server with --index")
        if not q.strip():
            return error(400, "give a text to search for")
        if not 1 <= k <= 200:
            return error(400, "k must lie in 1..200")
        with lock:
            hits = index.search(q, k=k)
        paths = index.embeddings()[0]
        position = {p: i for i, p in enumerate(paths)}
        return {"results": [{"path": os.path.relpath(p, index.root), "score": s,
                             "thumbnail": f"/api/thumbnail/{position[p]}"} for p, s in hits]}

    @app.get("/api/thumbnail/{number}")
    def thumbnail(number: int):
        paths = index.embeddings()[0] if index is not None else []
        if not 0 <= number < len(paths):
            return error(404, "no such image in the index")
        from PIL import Image

        from keras_siglip.utils.images import read_image

        try:
            image = Image.fromarray(read_image(paths[number]))
        except ValueError as problem:  # changed or removed since the index was built
            return error(404, str(problem))
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    return app


def _decode(data, name):
    """Uploaded bytes -> uint8 RGB array, through the package's one file reader."""
    import tempfile

    from keras_siglip.utils.images import read_image

    suffix = os.path.splitext(name or "")[1][:10]
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name)
        except ValueError as problem:
            raise ValueError(str(problem).replace(f.name, repr(name or "the upload"))) from None


def serve(preset=None, index=None, host="127.0.0.1", port=8000):
    """Runs the app with uvicorn until interrupted."""
    import sys

    import uvicorn

    with socket.socket() as probe:  # a taken port is a clear error before the model loads
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    app = create_app(preset, index)
    print(f"keras-siglip: serving on http://{host}:{port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keras-siglip</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
section { border: 1px solid #ccc; border-radius: 8px; padding: 1em; margin-bottom: 1.5em; }
#drop { border: 2px dashed #999; padding: 1em; text-align: center; }
#drop.over { background: #eef; }
#preview { max-width: 224px; max-height: 224px; display: block; margin: 0.5em 0; }
.bar { background: #4a7; height: 1em; display: inline-block; vertical-align: middle; }
table { border-collapse: collapse; } td { padding: 0.2em 0.6em; }
#grid { display: flex; flex-wrap: wrap; gap: 8px; }
#grid figure { margin: 0; width: 160px; font-size: 0.8em; word-break: break-all; }
.error { color: #b00; }
</style></head>
<body>
<h1>keras-siglip</h1>
<p>Model: <code id="preset">{{preset}}</code></p>
<section>
<h2>Zero-shot labels</h2>
<div id="drop">Drop an image here, or <input type="file" id="image" accept="image/*"></div>
<img id="preview" alt="">
<label>Labels, one per line:<br><textarea id="labels" rows="6" cols="40">{{labels}}</textarea></label><br>
<label>Template: <input id="template" value="{}" size="30"></label>
<button id="classify">Label it</button>
<p id="classify-error" class="error"></p>
<table id="labels-out"></table>
</section>
<section id="search-section" {{search}}>
<h2>Search the index</h2>
<input id="query" size="40" placeholder="a red car at night"> <button id="search">Search</button>
<p id="search-error" class="error"></p>
<div id="grid"></div>
</section>
<script>
let file = null;
const $ = (id) => document.getElementById(id);
function choose(f) { file = f; $("preview").src = URL.createObjectURL(f); }
$("image").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]); });
$("classify").addEventListener("click", async () => {
  $("classify-error").textContent = ""; $("labels-out").innerHTML = "";
  if (!file) { $("classify-error").textContent = "choose an image first"; return; }
  const form = new FormData();
  form.append("image", file); form.append("labels", $("labels").value); form.append("template", $("template").value);
  const response = await fetch("/api/classify", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) { $("classify-error").textContent = body.error; return; }
  for (const row of body.labels) {
    const tr = document.createElement("tr"); tr.className = "label-row";
    const name = document.createElement("td"); name.className = "label"; name.textContent = row.label;
    const bar = document.createElement("td");
    bar.innerHTML = `<span class="bar" style="width:${Math.round(200 * row.probability)}px"></span>`;
    const p = document.createElement("td"); p.className = "probability"; p.textContent = row.probability.toFixed(3);
    tr.append(name, bar, p); $("labels-out").append(tr);
  }
});
async function search() {
  $("search-error").textContent = ""; $("grid").innerHTML = "";
  const response = await fetch("/api/search?k=12&q=" + encodeURIComponent($("query").value));
  const body = await response.json();
  if (!response.ok) { $("search-error").textContent = body.error; return; }
  for (const hit of body.results) {
    const figure = document.createElement("figure"); figure.className = "hit";
    const img = document.createElement("img"); img.src = hit.thumbnail; img.alt = hit.path;
    const caption = document.createElement("figcaption");
    caption.textContent = `${hit.score.toFixed(3)} ${hit.path}`;
    figure.append(img, caption); $("grid").append(figure);
  }
}
$("search").addEventListener("click", search);
$("query").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
</script>
</body></html>
"""
