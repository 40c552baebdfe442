"""A local web app: zero-shot labels and index search (SigLIP), captions and boxes (captioners).

    keras-siglip serve [--preset P] [--index INDEX] [--host 127.0.0.1] [--port 8000]

    from keras_siglip.serve import create_app
    app = create_app("siglip2_shapes_tiny", index="photos/")   # an ASGI app (FastAPI)

FastAPI on uvicorn: maintained, the field's usual pair for a Python model server,
and FastAPI's test client exercises the same routes in-process. The preset
decides what the page offers: a SigLIP / SigLIP 2 preset labels and searches;
a CapPa, LocCa, LiT-decoder or PaliGemma preset captions, and (LocCa,
PaliGemma) detects.
Routes:

    GET  /                      the page (no external scripts or styles: works offline)
    POST /api/classify          form: image (file), labels (one per line), template
                                -> {"labels": [{"label", "probability"}, ...]} best first
    GET  /api/search?q=TEXT&k=N -> {"results": [{"path", "score", "thumbnail"}, ...]} best first
    GET  /api/thumbnail/{i}     a JPEG thumbnail of the index's i-th image (by number,
                                never by path: the server reads no file outside the index)
    POST /api/caption           form: image -> {"caption": "..."}
    POST /api/detect            form: image, objects ("cat ; dog") -> {"objects": [{"label",
                                "box": [y1, x1, y2, x2] in [0, 1]}, ...], "image": a PNG data
                                URL of the upload with the boxes drawn}
    GET  /api/info              the preset, its model and what it can do, the index and its size

Bad input (not an image, no labels, a template without `{}`, a task the
model cannot do) is a 400 with `{"error": "..."}`; the model runs one request
at a time.
"""

import base64
import html
import io
import os
import socket
import threading

DEFAULT_LABELS = ("a red circle", "a blue square", "a green triangle", "a yellow star", "a photo of a dog",
                  "a photo of a cat")
THUMBNAIL_SIZE = 160
BOX_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


class Captioner:
    """One interface over the package's captioners (CapPa, LocCa, LiT decoder, PaliGemma) for the app.

    `caption(image)` -> str; `detect(image, names)` -> `[(name, [y1, x1, y2, x2])]`
    normalised to [0, 1] (LocCa grounds each name to one box, PaliGemma runs
    its `detect` prompt); `can_detect` says whether the model has location
    tokens (a CapPa captioner does not).
    """

    def __init__(self, model):
        from keras_siglip.models import LocCaCaptioner, PaliGemmaCausalLM

        self.model = model
        self.pali_gemma = isinstance(model, PaliGemmaCausalLM)
        self.locca = isinstance(model, LocCaCaptioner)
        self.can_detect = self.pali_gemma or self.locca

    def caption(self, image):
        if self.pali_gemma or self.locca:  # their task methods: the caption prompt, the output parsed
            return self.model.caption([image])[0]
        return self.model.generate([image])[0]

    def detect(self, image, names):
        if self.pali_gemma:
            found = self.model.detect([image], names)[0]
            return [(label, [float(v) for v in box]) for label, box in zip(found.labels, found.boxes)]
        boxes, valid = self.model.ground([image] * len(names), names)
        return [(name, [float(v) for v in box]) for name, box, ok in zip(names, boxes, valid) if ok]


def load_model(preset):
    """`("contrastive", Embedder)` for a SigLIP preset, `("captioner", Captioner)`
    for a CapPa / LocCa / LiT-decoder / PaliGemma one; a clear error for anything else."""
    from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE, check_file_exists, load_json

    from keras_siglip.models import (
        CapPaBackbone, CapPaCaptioner, LiTDecoder, LiTDecoderBackbone, LocCaCaptioner, PaliGemmaBackbone,
        PaliGemmaCausalLM, SigLIPBackbone,
    )
    from keras_siglip.search import Embedder
    from keras_siglip.utils.preset import preset_loader

    resolved, _, backbone_class = preset_loader(preset)
    if issubclass(backbone_class, SigLIPBackbone):
        return "contrastive", Embedder(resolved)
    if issubclass(backbone_class, PaliGemmaBackbone):
        return "captioner", Captioner(PaliGemmaCausalLM.from_preset(resolved))
    if issubclass(backbone_class, LiTDecoderBackbone):
        return "captioner", Captioner(LiTDecoder.from_preset(resolved))
    if issubclass(backbone_class, CapPaBackbone):
        task = load_json(resolved, TASK_CONFIG_FILE)["class_name"] if check_file_exists(
            resolved, TASK_CONFIG_FILE) else None
        model_class = LocCaCaptioner if task == "LocCaCaptioner" else CapPaCaptioner
        return "captioner", Captioner(model_class.from_preset(resolved))
    raise ValueError(f"{preset!r} holds a {backbone_class.__name__}; the web app serves SigLIP, CapPa, LocCa, "
                     "LiT-decoder and PaliGemma presets.")


def create_app(preset, index=None):
    """The web app of `preset` (a SigLIP / SigLIP 2 preset) and, optionally, an
    image index (file or folder, see `keras_siglip.search`) built with it."""
    try:
        from fastapi import FastAPI, File, Form, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as missing:
        raise ImportError(f"the web app needs FastAPI ({missing}): pip install \"keras-siglip[serve]\"") from None

    from keras_siglip.models import SigLIPZeroShotClassifier
    from keras_siglip.search import ImageIndex

    if index is not None:
        index = ImageIndex(index)
        if preset is not None and preset != index.preset:
            raise ValueError(f"the index was built with {index.preset!r}, not {preset!r}; leave --preset out to "
                             "use the index's.")
        preset = index.preset
        index.embeddings()  # read once, before the first query
    if index is not None:
        kind, model = "contrastive", index.model()
    else:
        kind, model = load_model(preset)
    embedder = model if kind == "contrastive" else None
    captioner = model if kind == "captioner" else None
    lock = threading.Lock()
    classifiers = {}

    app = FastAPI(title="keras-siglip", docs_url=None, redoc_url=None)

    def error(status, message):
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def page():
        shown = {"labels": embedder is not None, "search": index is not None, "caption": captioner is not None,
                 "detect": captioner is not None and captioner.can_detect}
        page = _PAGE.replace("{{preset}}", html.escape(str(preset))).replace(
            "{{labels}}", html.escape("\n".join(DEFAULT_LABELS)))
        for section, show in shown.items():
            page = page.replace("{{%s-section}}" % section, "" if show else "hidden")
        return page

    @app.get("/api/info")
    def info():
        # The embeddings were read at start: the handlers' threads never touch the index's database.
        if embedder is not None:
            tasks, model_class = ["classify"] + (["search"] if index is not None else []), type(embedder.backbone)
        else:
            tasks, model_class = ["caption"] + (["detect"] if captioner.can_detect else []), type(captioner.model)
        return {"preset": preset, "model": model_class.__name__, "tasks": tasks,
                "index": index.path if index is not None else None,
                "images": len(index.embeddings()[0]) if index is not None else 0}

    @app.exception_handler(_BadUpload)
    def bad_upload(request, problem):
        return error(400, str(problem))

    def upload(image):
        """The uploaded image as uint8 RGB; a 400 when it is not an image."""
        try:
            return _decode(image.file.read(), image.filename)
        except ValueError as problem:
            raise _BadUpload(problem) from None

    @app.post("/api/caption")
    def caption(image: UploadFile = File(...)):
        if captioner is None:
            return error(400, f"{preset} is a contrastive model: it labels and searches, it does not caption")
        pixels = upload(image)
        with lock:
            return {"caption": captioner.caption(pixels)}

    @app.post("/api/detect")
    def detect(image: UploadFile = File(...), objects: str = Form(...)):
        if captioner is None or not captioner.can_detect:
            return error(400, f"{preset} cannot detect: that needs a LocCa or PaliGemma preset")
        names = [name.strip() for name in objects.split(";") if name.strip()]
        if not names:
            return error(400, "name at least one object (separate several with ;)")
        pixels = upload(image)
        with lock:
            found = captioner.detect(pixels, names)
        return {"objects": [{"label": label, "box": box} for label, box in found],
                "image": "data:image/png;base64," + base64.b64encode(draw_boxes(pixels, found)).decode()}

    @app.post("/api/classify")
    def classify(image: UploadFile = File(...), labels: str = Form(...), template: str = Form("{}")):
        if embedder is None:
            return error(400, f"{preset} is a captioner: it captions{' and detects' if captioner.can_detect else ''}, "
                              "it does not label with a text tower")
        names = [line.strip() for line in labels.splitlines() if line.strip()]
        if not names:
            return error(400, "give at least one label (one per line)")
        if len(set(names)) != len(names):
            return error(400, "labels must be different from each other")
        if template.count("{}") != 1:
            return error(400, "the template needs exactly one {} for the label")
        pixels = upload(image)
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


class _BadUpload(ValueError):
    """An upload that is not a readable image (answered with a 400)."""


def draw_boxes(image, found):
    """PNG bytes of `image` (uint8 RGB) with each `(label, [y1, x1, y2, x2])`
    normalised box outlined and labelled."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    line = max(2, round(min(height, width) / 100))
    for i, (label, (y1, x1, y2, x2)) in enumerate(found):
        color = BOX_COLORS[i % len(BOX_COLORS)]
        corners = [x1 * width, y1 * height, x2 * width, y2 * height]
        draw.rectangle(corners, outline=color, width=line)
        draw.text((corners[0] + line + 1, corners[1] + line), label, fill=color)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


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
#detect-out { width: 320px; height: auto; }
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
<h2>Image</h2>
<div id="drop">Drop an image here, or <input type="file" id="image" accept="image/*"></div>
<img id="preview" alt="">
</section>
<section id="labels-section" {{labels-section}}>
<h2>Zero-shot labels</h2>
<label>Labels, one per line:<br><textarea id="labels" rows="6" cols="40">{{labels}}</textarea></label><br>
<label>Template: <input id="template" value="{}" size="30"></label>
<button id="classify">Label it</button>
<p id="classify-error" class="error"></p>
<table id="labels-out"></table>
</section>
<section id="caption-section" {{caption-section}}>
<h2>Caption</h2>
<button id="caption">Caption it</button>
<p id="caption-error" class="error"></p>
<p id="caption-out"></p>
</section>
<section id="detect-section" {{detect-section}}>
<h2>Detect</h2>
<label>Objects (separate with ;): <input id="objects" size="40" value="a red circle ; a blue square"></label>
<button id="detect">Detect</button>
<p id="detect-error" class="error"></p>
<img id="detect-out" alt="">
<ul id="detect-list"></ul>
</section>
<section id="search-section" {{search-section}}>
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
  $("labels-out").innerHTML = "";
  const body = await post("/api/classify", { labels: $("labels").value, template: $("template").value },
                          "classify-error");
  if (!body) return;
  for (const row of body.labels) {
    const tr = document.createElement("tr"); tr.className = "label-row";
    const name = document.createElement("td"); name.className = "label"; name.textContent = row.label;
    const bar = document.createElement("td");
    bar.innerHTML = `<span class="bar" style="width:${Math.round(200 * row.probability)}px"></span>`;
    const p = document.createElement("td"); p.className = "probability"; p.textContent = row.probability.toFixed(3);
    tr.append(name, bar, p); $("labels-out").append(tr);
  }
});
async function post(route, fields, errorId) {
  $(errorId).textContent = "";
  if (!file) { $(errorId).textContent = "choose an image first"; return null; }
  const form = new FormData();
  form.append("image", file);
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  const response = await fetch(route, { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) { $(errorId).textContent = body.error; return null; }
  return body;
}
$("caption").addEventListener("click", async () => {
  $("caption-out").textContent = "";
  const body = await post("/api/caption", {}, "caption-error");
  if (body) $("caption-out").textContent = body.caption;
});
$("detect").addEventListener("click", async () => {
  $("detect-out").removeAttribute("src"); $("detect-list").innerHTML = "";
  const body = await post("/api/detect", { objects: $("objects").value }, "detect-error");
  if (!body) return;
  $("detect-out").src = body.image;
  for (const found of body.objects) {
    const li = document.createElement("li"); li.className = "detection";
    li.textContent = `${found.label}: [${found.box.map((v) => v.toFixed(3)).join(", ")}]`;
    $("detect-list").append(li);
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
