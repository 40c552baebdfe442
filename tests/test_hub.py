"""Published checkpoints by name and `hf://` URIs, through the real `huggingface_hub`
client against a Hub on 127.0.0.1 (`tests/hub_server.py`), offline.

Tiny random HF checkpoints of each family (SigLIP, SigLIP 2 NaFlex, PaliGemma 1
and 2) are served under cards registered for the test; what `from_preset`
downloads, converts and caches must give the reference model's outputs (1e-5,
float32), the second load must make no request, a cut connection must resume,
and a damaged cached preset must be reported and rebuilt.
"""

import os
import shutil
import subprocess
import sys

import huggingface_hub
import keras
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_siglip import cli, hub  # noqa: E402
from keras_siglip.convert import write_big_vision  # noqa: E402
from keras_siglip.convert.common import CheckpointMismatch  # noqa: E402
from keras_siglip.convert.huggingface import read_huggingface  # noqa: E402
from keras_siglip.models import SigLIPBackbone  # noqa: E402
from keras_siglip.models.pali_gemma import PaliGemmaBackbone, PaliGemmaCausalLM  # noqa: E402
from keras_siglip.presets import PUBLISHED_PRESETS, pali_gemma_presets  # noqa: E402
from tests import pali_gemma_reference as pg  # noqa: E402
from tests.hf_siglip_cases import assert_outputs_match, hf_model  # noqa: E402
from tests.hub_server import LoopbackHub  # noqa: E402

ATOL = 1e-5
# PaliGemma 2 with a window longer than the sequence: the converter's default (no
# window, as big_vision) and HF's model then compute the same function.
GEMMA_2 = dict(pg.GEMMA_2, sliding_window=64)
TEST_METADATA = {"params": 0, "description": "a test card"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (reference model, HF folder)."""
    out = {}
    for naflex in (False, True):
        model = hf_model(naflex)
        folder = str(tmp_path_factory.mktemp("naflex" if naflex else "siglip"))
        model.save_pretrained(folder, safe_serialization=True)
        out["naflex" if naflex else "siglip"] = (model, folder)
    out["paligemma"] = pg.saved_hf_pali_gemma(tmp_path_factory, "paligemma", pg.GEMMA_1, seed=0)
    out["paligemma2"] = pg.saved_hf_pali_gemma(tmp_path_factory, "paligemma2", GEMMA_2, seed=1)
    return out


@pytest.fixture
def loopback(tmp_path, monkeypatch):
    """A running `LoopbackHub`, with the Hub client, its cache and ours pointed at it / tmp_path."""
    with LoopbackHub() as server:
        for name, value in {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "hf"),
                            "KERAS_SIGLIP_CACHE": str(tmp_path / "ks"),
                            "KERAS_SIGLIP_GCS_ENDPOINT": server.url + "/gcs",
                            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "KERAS_SIGLIP_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        # `hf://` goes through keras-hub's `get_file`, which uses the client's import-time settings.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def card(monkeypatch, name, family, sources, config=None):
    """Register a test card `name` (architecture `config`) with `sources`."""
    if family.startswith("paligemma"):
        monkeypatch.setitem(pali_gemma_presets(), name, {"metadata": TEST_METADATA, "config": config or {}, "sources": sources})
    else:
        monkeypatch.setitem(PUBLISHED_PRESETS, name, {"metadata": TEST_METADATA, "config": config or {}, "sources": sources})


def assert_pali_gemma_matches(backbone, model):
    for seed in (0, 1):
        inputs = pg.make_inputs(seed)
        difference = pg.max_real_difference(pg.keras_logits(backbone, inputs), pg.hf_text_logits(model, inputs), inputs)
        print(f"max |ours - HF| logits: {difference:.2e}")
        assert difference <= ATOL


def assert_matches(family, backbone, model):
    if family.startswith("paligemma"):
        assert_pali_gemma_matches(backbone, model)
    else:
        assert_outputs_match(backbone, model, family == "naflex")


@pytest.mark.parametrize("family", ["siglip", "naflex", "paligemma", "paligemma2"])
def test_a_published_name_downloads_converts_once_and_matches(family, checkpoints, loopback, monkeypatch, capsys):
    model, folder = checkpoints[family]
    loopback.add_repo(f"test/tiny-{family}", folder)
    card(monkeypatch, f"tiny_{family}", family, {"huggingface": f"test/tiny-{family}"})
    cls = PaliGemmaBackbone if family.startswith("paligemma") else SigLIPBackbone

    backbone = cls.from_preset(f"tiny_{family}")
    assert_matches(family, backbone, model)
    assert len(loopback.weight_requests()) == 1
    assert os.path.isfile(os.path.join(hub.cached_preset(f"tiny_{family}"), "model.weights.h5"))
    cli.main(["presets", "-v"])
    listing = capsys.readouterr().out
    assert f"huggingface  test/tiny-{family}" in listing
    assert f"cached: {hub.cached_preset(f'tiny_{family}')}" in listing

    seen = len(loopback.requests)
    again = cls.from_preset(f"tiny_{family}")
    assert len(loopback.requests) == seen, "a cached preset loads without asking the Hub anything"
    assert_matches(family, again, model)


def test_an_hf_uri_downloads_through_the_client_and_caches(checkpoints, loopback):
    model, folder = checkpoints["siglip"]
    loopback.add_repo("test/tiny", folder)
    assert_outputs_match(SigLIPBackbone.from_preset("hf://test/tiny"), model, False)
    assert len(loopback.weight_requests()) == 1
    assert_outputs_match(SigLIPBackbone.from_preset("hf://test/tiny"), model, False)
    assert len(loopback.weight_requests()) == 1, "the second load downloads no weights"


def test_a_cut_download_resumes(checkpoints, loopback, monkeypatch):
    model, folder = checkpoints["siglip"]
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    loopback.add_repo("test/tiny", folder)
    loopback.cut("model.safetensors", after=size // 2)
    # The client writes (and so resumes from) whole chunks of 10 MB; a tiny file needs tiny chunks.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 << 10)
    card(monkeypatch, "tiny_siglip", "siglip", {"huggingface": "test/tiny"})
    try:
        backbone = SigLIPBackbone.from_preset("tiny_siglip")
    except hub.PresetUnavailable:  # the client gave up on this call: the next one resumes
        backbone = SigLIPBackbone.from_preset("tiny_siglip")
    gets = loopback.weight_requests()
    assert len(gets) == 2 and gets[0][2] is None
    resumed_at = int(gets[1][2].removeprefix("bytes=").removesuffix("-"))
    assert size // 2 - (16 << 10) <= resumed_at <= size // 2, "the second request asks only for the missing bytes"
    assert_outputs_match(backbone, model, False)


def test_the_next_source_answers_and_a_cut_file_download_resumes(checkpoints, loopback, monkeypatch, tmp_path):
    # No such repo on the Hub: the card's big_vision file (a public bucket) is next.
    model, folder = checkpoints["siglip"]
    reference = SigLIPBackbone.from_preset(folder)
    npz = str(tmp_path / "tiny.npz")
    write_big_vision(reference, npz)
    loopback.add_bucket_file("big_vision/tiny.npz", npz)
    loopback.cut("tiny.npz", after=os.path.getsize(npz) // 2)
    config = read_huggingface(folder).config
    card(monkeypatch, "tiny_siglip", "siglip", {"huggingface": "test/missing", "big_vision": "gs://big_vision/tiny.npz"},
         config=config)
    with pytest.raises(hub.PresetUnavailable, match="next call resumes"):
        SigLIPBackbone.from_preset("tiny_siglip")
    backbone = SigLIPBackbone.from_preset("tiny_siglip")
    ranges = [r[2] for r in loopback.weight_requests()]
    assert ranges == [None, f"bytes={os.path.getsize(npz) // 2}-"]
    assert_outputs_match(backbone, model, False)


def test_a_damaged_cached_preset_is_reported_and_rebuilt(checkpoints, loopback, monkeypatch, capsys):
    model, folder = checkpoints["siglip"]
    loopback.add_repo("test/tiny", folder)
    card(monkeypatch, "tiny_siglip", "siglip", {"huggingface": "test/tiny"})
    SigLIPBackbone.from_preset("tiny_siglip")
    weights = os.path.join(hub.cached_preset("tiny_siglip"), "model.weights.h5")
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) - 64)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    capsys.readouterr()
    backbone = SigLIPBackbone.from_preset("tiny_siglip")
    assert "model.weights.h5 does not match the SHA-256" in capsys.readouterr().err
    assert len(loopback.weight_requests()) == 1, "rebuilt from the Hub client's cache, not downloaded again"
    assert_outputs_match(backbone, model, False)


def test_a_gated_repo_names_the_licence_page_and_the_token(checkpoints, loopback, monkeypatch):
    loopback.add_repo("test/gated", checkpoints["paligemma"][1], gated=True)
    card(monkeypatch, "tiny_paligemma", "paligemma", {"huggingface": "test/gated"})
    with pytest.raises(hub.GatedCheckpoint) as error:
        PaliGemmaCausalLM.from_preset("tiny_paligemma")
    message = str(error.value)
    assert "\n" not in message
    assert f"{loopback.url}/test/gated" in message and "HF_TOKEN" in message


def test_offline_and_not_found_say_what_was_tried(loopback, monkeypatch):
    card(monkeypatch, "tiny_siglip", "siglip", {"huggingface": "test/nowhere", "big_vision": "gs://big_vision/nowhere.npz"})
    with pytest.raises(hub.PresetUnavailable) as error:
        SigLIPBackbone.from_preset("tiny_siglip")
    message = str(error.value)
    assert "huggingface test/nowhere (no repo test/nowhere" in message
    assert "big_vision gs://big_vision/nowhere.npz (HTTP 404" in message
    assert "keras-siglip convert" in message and "\n" not in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(loopback.requests)
    with pytest.raises(hub.PresetUnavailable, match=r"offline \(HF_HUB_OFFLINE=1\), and not in the Hugging Face cache"):
        SigLIPBackbone.from_preset("tiny_siglip")
    assert len(loopback.requests) == seen, "offline means no request"


def test_a_source_holding_another_architecture_is_refused(checkpoints, loopback):
    # The real card's name, but the repo serves a tiny model: refused before converting.
    loopback.add_repo("google/siglip2-base-patch16-224", checkpoints["siglip"][1])
    with pytest.raises(CheckpointMismatch, match=r"vision_encoder.width: card 768, google/siglip2-base-patch16-224 32"):
        SigLIPBackbone.from_preset("siglip2_base_patch16_224")
    assert not hub.is_cached("siglip2_base_patch16_224")


@pytest.mark.slow
def test_cli_reads_the_hub_settings_from_the_environment(checkpoints, loopback, tmp_path):
    """The installed command in a subprocess, configured only by environment
    variables as a user would: a gated repo and offline are one line each (the
    same on every backend: run in the JAX pass)."""
    if keras.backend.backend() != "jax":
        pytest.skip("runs in the jax pass")
    loopback.add_repo("google/paligemma-3b-pt-224", checkpoints["paligemma"][1], gated=True)
    env = {key: value for key, value in os.environ.items() if key != "KERAS_SIGLIP_OFFLINE"}
    env["HF_ENDPOINT"] = loopback.url
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    installed = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    command = [installed, "zero-shot", str(image), "--preset", "paligemma_3b_pt_224",
               "--labels", "a", "b"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("keras-siglip: error: The Hugging Face repo google/paligemma-3b-pt-224 is gated")

    result = subprocess.run(command, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "offline" in lines[0] and "keras-siglip convert" in lines[0]
