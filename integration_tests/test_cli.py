"""The `keras-siglip` command on the shipped default preset, offline."""

import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

from keras_siglip import cli
from keras_siglip.data import shapes
from tests.helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Held-out shapes images of odd sizes, written as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    data = shapes.ShapesDataset(3, seed=7, image_size=None)
    paths, labels = [], []
    for i in range(len(data)):
        example = data[i]
        path = folder / f"{i}.png"
        Image.fromarray(example["image"]).save(path)
        paths.append(str(path))
        labels.append(shapes.class_names()[example["label"]])
    return paths, labels


def test_presets_lists_shipped_and_published(capsys):
    cli.main(["presets", "-v"])
    out = capsys.readouterr().out
    assert "siglip2_shapes_tiny" in out and "siglip2_so400m_patch16_384" in out
    assert "google/siglip-base-patch16-224" in out


def test_zero_shot_ranks_labels(capsys, image_files):
    """The shipped model names each image's colour and shape: the images' own labels
    (orange cross, black circle, green triangle) rank first among 5, where "black
    cross" shares a colour with one and a shape with another (chance: 1/5 an image;
    the model reaches ~90% over all 48 labels)."""
    paths, labels = image_files
    choices = sorted(set(labels) | {"black cross", "white star"})
    cli.main(["zero-shot", *paths, "--labels", *choices, "--top-k", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == paths[0] and len(out) == 4 * len(paths)
    for i, (path, label) in enumerate(zip(paths, labels)):
        block = out[4 * i : 4 * i + 4]
        assert block[0] == path
        ranked = [line.split(None, 1) for line in block[1:]]
        probabilities = [float(p) for p, _ in ranked]
        assert ranked[0][1] == label, (path, label, block)
        assert all(0.0 <= p <= 1.0 for p in probabilities) and probabilities == sorted(probabilities, reverse=True)


def test_embed_writes_npy(tmp_path, image_files, capsys):
    paths, _ = image_files
    cli.main(["embed", *paths, "--out", str(tmp_path / "img.npy")])
    cli.main(["embed", "--texts", "a red circle", "two blue squares", "--out", str(tmp_path / "txt.npy")])
    images, texts = np.load(tmp_path / "img.npy"), np.load(tmp_path / "txt.npy")
    assert images.shape[0] == len(paths) and texts.shape[0] == 2
    assert images.shape[1] == texts.shape[1]
    np.testing.assert_allclose(np.linalg.norm(images, axis=-1), 1, atol=1e-5)


def test_demo_reports_accuracy_and_writes_a_picture(tmp_path, capsys):
    out = tmp_path / "demo.png"
    cli.main(["demo", "--num-images", "96", "--out", str(out)])
    text = capsys.readouterr().out
    accuracy = float(text.split("labels): ")[1].split("%")[0]) / 100
    true_probability = float(text.split("true label ")[1].split()[0])
    # Chance is 1/48; the shipped model's card: 99.0% and 0.89 on 500 held-out images (this is their first 96).
    assert accuracy >= 0.95 and true_probability > 0.75, text
    assert Image.open(out).size[0] > 100


def test_errors_are_clear(capsys, tmp_path):
    assert cli.main(["zero-shot", str(tmp_path / "missing.png"), "--labels", "a"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-siglip: error: ") and "missing.png" in err and err.count("\n") == 1, err
    assert cli.main(["embed", "--texts", "a", "--preset", "siglip2_shapes_tiyn", "--out", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "Unknown preset 'siglip2_shapes_tiyn'" in err and "Did you mean 'siglip2_shapes_tiny'" in err, err
    assert not (tmp_path / "x.npy").exists()


def test_convert_pali_gemma_hf_folder_and_big_vision_npz(tmp_path, capsys):
    """`keras-siglip convert` tells a PaliGemma checkpoint from its contents (a
    big_vision .npz with img/ + llm/ params, an HF folder with model_type
    "paligemma") and writes a PaliGemmaBackbone preset; unknown layouts fail clearly."""
    import keras

    from keras_siglip.convert import detect_model
    from keras_siglip.convert.pali_gemma import load_pali_gemma, write_pali_gemma_big_vision
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    config = dict(vocabulary_size=64, image_size=16, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                  hidden_dim=24, intermediate_dim=32, head_dim=8, vit_patch_size=4, vit_hidden_dim=16,
                  vit_num_layers=2, vit_num_heads=2, vit_intermediate_dim=24, use_post_norms=True,
                  attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0)
    source = PaliGemmaBackbone(**config)
    rng = np.random.default_rng(0)
    source.set_weights([0.2 * rng.standard_normal(w.shape).astype("float32") for w in source.weights])
    inputs = dict(images=rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32"),
                  token_ids=rng.integers(1, 64, (2, 6)).astype("int32"),
                  padding_mask=np.ones((2, 6), "int32"),
                  response_mask=np.array([[0, 0, 0, 1, 1, 1]] * 2, "int32"))
    expected = keras.ops.convert_to_numpy(source(inputs))

    npz = str(tmp_path / "pt_tiny.npz")
    write_pali_gemma_big_vision(source, npz)
    assert detect_model(npz) == "pali_gemma"
    cli.main(["convert", npz, str(tmp_path / "from_npz")])
    assert "Wrote" in capsys.readouterr().out
    converted = PaliGemmaBackbone.from_preset(str(tmp_path / "from_npz"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(converted(inputs)), expected, atol=1e-5)

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.PaliGemmaForConditionalGeneration(transformers.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=24,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", vocab_size=64, hidden_size=24, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1, head_dim=8),
        projection_dim=24, image_token_index=63, vocab_size=64,
    ))
    folder = str(tmp_path / "hf_paligemma")
    hf.save_pretrained(folder, safe_serialization=True)
    assert detect_model(folder) == "pali_gemma"
    cli.main(["convert", folder, str(tmp_path / "from_hf")])
    converted = PaliGemmaBackbone.from_preset(str(tmp_path / "from_hf"))
    assert converted.get_config()["num_key_value_heads"] == 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(converted(inputs)),
                                  keras.ops.convert_to_numpy(load_pali_gemma(folder)(inputs)))

    capsys.readouterr()
    np.savez(tmp_path / "vae-oid.npz", **{"_vq_vae._embedding": np.zeros((128, 8), "float32")})
    assert cli.main(["convert", str(tmp_path / "vae-oid.npz"), str(tmp_path / "x")]) == 1
    assert "segmentation VQ-VAE" in capsys.readouterr().err
    np.savez(tmp_path / "odd.npz", **{"params/foo/w": np.zeros(2, "float32")})
    assert cli.main(["convert", str(tmp_path / "odd.npz"), str(tmp_path / "x")]) == 1
    assert re.search(r"not a big_vision checkpoint layout.*found \['foo'\]", capsys.readouterr().err)
    assert cli.main(["convert", npz, str(tmp_path / "x"), "--tokenizer", npz]) == 1
    assert "tokenizer is supported for SigLIP" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- every door, as a new user tries it ------------------------------------------------


@pytest.mark.parametrize("args,words", [
    (["zero-shot", "IMG", "--labels", "a", "--top-k", "0"], "positive integer"),
    (["zero-shot", "IMG", "--labels", "a", "--top-k", "-1"], "positive integer"),
    (["zero-shot", "IMG", "--labels", "a", "--top-k", "two"], "positive integer"),
    (["zero-shot", "IMG", "--labels", "a", ""], "must not be empty"),
    (["zero-shot", "IMG", "--labels", "  "], "must not be empty"),
    (["zero-shot", "IMG", "--labels", "a", "--templates", "a photo"], "exactly one '{}'"),
    (["zero-shot", "IMG", "--labels", "a", "--templates", "{} and {}"], "exactly one '{}'"),
    (["zero-shot", "IMG"], "--labels"),
    (["embed", "IMG", "--out", "x.txt"], ".npy"),
    (["embed", "IMG", "--texts", "a", "--out", "x.npy"], "either IMAGE files or --texts"),
    (["embed", "--out", "x.npy"], "either IMAGE files or --texts"),
    (["demo", "--num-images", "0"], "positive integer"),
    (["convert", "only_one"], "destination"),
    ([], "command"),
    (["no-such-command"], "invalid choice"),
])
def test_usage_errors_exit_2_with_one_message(capsys, image_files, args, words):
    args = [image_files[0][0] if a == "IMG" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: " in err and words in err and "Traceback" not in err, err


def test_zero_shot_top_k_and_labels(capsys, image_files):
    paths, labels = image_files
    status, out, _ = run_cli(capsys, "zero-shot", paths[0], "--labels", "red circle", "blue square", "--top-k", "9")
    assert status == 0 and len(out.splitlines()) == 3  # the path and both labels, not more
    status, _, err = run_cli(capsys, "zero-shot", paths[0], "--labels", "cat", "dog", "cat")
    assert_one_line_error(status, err, "'cat' is given twice")


def test_embed_writes_exactly_the_path_given(tmp_path, capsys):
    out = tmp_path / "name with spaces é.npy"
    status, stdout, _ = run_cli(capsys, "embed", "--texts", "a red circle", "--out", str(out))
    assert status == 0 and stdout.strip().endswith(f"to {out}")
    assert np.load(out).shape[0] == 1 and sorted(os.listdir(tmp_path)) == [out.name]
    with pytest.raises(SystemExit):  # a trailing slash names a folder: not a .npy file name
        cli.main(["embed", "--texts", "a", "--out", f"{tmp_path}/folder.npy/"])
    capsys.readouterr()
    (tmp_path / "dir.npy").mkdir()
    assert_one_line_error(*run_cli(capsys, "embed", "--texts", "a", "--out", str(tmp_path / "dir.npy"))[::2],
                          "is a folder")
    assert_one_line_error(*run_cli(capsys, "embed", "--texts", "a", "--out", str(tmp_path / "no" / "x.npy"))[::2],
                          "does not exist")
    os.mkfifo(tmp_path / "pipe.npy")  # a special file is refused, never replaced or written beside
    assert_one_line_error(*run_cli(capsys, "embed", "--texts", "a", "--out", str(tmp_path / "pipe.npy"))[::2],
                          "not a regular file")
    with pytest.raises(SystemExit):  # /dev/full: not a .npy name, refused before anything runs
        cli.main(["embed", "--texts", "a", "--out", "/dev/full"])
    assert not os.path.exists("/dev/full.npy")
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, "dir.npy", "pipe.npy"])


def test_bad_image_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name in ("text.png", "empty.jpg", "folder.png", "missing.png"):
        status, out, err = run_cli(capsys, "zero-shot", str(tmp_path / name), "--labels", "a")
        assert_one_line_error(status, err, name)
        assert out == ""


def test_convert_refusals_are_one_line_errors(tmp_path, capsys):
    from keras_siglip.models import SigLIPBackbone

    preset = tmp_path / "preset"
    SigLIPBackbone.from_preset("siglip2_shapes_tiny").save_to_preset(str(preset))
    target = tmp_path / "file.txt"
    target.write_text("kept")
    assert_one_line_error(*run_cli(capsys, "convert", str(preset), str(preset), "--to", "huggingface")[::2],
                          "is the source")
    assert_one_line_error(*run_cli(capsys, "convert", str(preset), str(target), "--to", "huggingface")[::2],
                          "is a file")
    assert_one_line_error(*run_cli(capsys, "convert", str(tmp_path / "nothing"), str(tmp_path / "x"))[::2],
                          "nothing")
    assert target.read_text() == "kept" and sorted(os.listdir(tmp_path)) == ["file.txt", "preset"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown preset"):
        cli.main(["--debug", "embed", "--texts", "a", "--preset", "nope", "--out", str(tmp_path / "x.npy")])


@pytest.mark.slow
def test_installed_command_in_a_subprocess(tmp_path, image_files):
    """The real door: the installed `keras-siglip`: results on stdout, nothing else on
    stderr (no framework start-up logs), one line and status 1 for a failure,
    usage errors before any framework is imported."""
    import shutil
    import subprocess
    import sys
    import time

    command = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quieten the frameworks itself

    def run(*args):
        return subprocess.run([command, *args], capture_output=True, text=True, env=env, timeout=300)

    start = time.perf_counter()
    usage = run("zero-shot", "x.png", "--labels", "a", "--top-k", "0")
    assert usage.returncode == 2 and "positive integer" in usage.stderr and usage.stdout == ""
    assert time.perf_counter() - start < 60  # no framework import before arguments are checked

    paths, labels = image_files
    good = run("zero-shot", paths[0], "--labels", *sorted(set(labels) | {"black cross"}), "--top-k", "1")
    assert good.returncode == 0 and good.stderr == "", good.stderr
    assert good.stdout.splitlines()[1].split(None, 1)[1] == labels[0]

    (tmp_path / "text.png").write_text("not an image")
    bad = run("zero-shot", str(tmp_path / "text.png"), "--labels", "a")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("keras-siglip: error: ") and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="a subprocess with its own KERAS_BACKEND")
def test_a_backend_whose_framework_is_missing_is_one_line(tmp_path):
    """KERAS_BACKEND=torch without PyTorch installed (a `torch` that cannot be
    imported shadows the real one): one line naming the extra to install."""
    import shutil
    import subprocess
    import sys

    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    command = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(KERAS_BACKEND="torch", PYTHONPATH=str(tmp_path / "site"))
    run = subprocess.run([command, "embed", "--texts", "a red circle", "--out", str(tmp_path / "e.npy")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and run.stdout == "", run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("keras-siglip: error: KERAS_BACKEND=torch needs PyTorch, which is not installed")
    assert 'pip install "keras-siglip[torch]"' in run.stderr


@pytest.mark.parametrize("argv", [["--help"], ["presets"], ["presets", "-v"]])
def test_listing_starts_without_a_framework(argv):
    """`--help` and `presets` import no TensorFlow, JAX, torch or Keras (they
    took 6-8 s and 860 MB; now about 0.1 s)."""
    import subprocess
    import sys

    code = ("import sys\nfrom keras_siglip import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "loaded = [m for m in ('tensorflow', 'jax', 'torch', 'keras', 'keras_hub') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: keras-siglip" in run.stdout if argv == ["--help"] else "siglip2_shapes_tiny" in run.stdout
