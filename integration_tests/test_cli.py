"""The `keras-siglip` command on the shipped default preset, offline."""

import numpy as np
import pytest
from PIL import Image

from keras_siglip import cli
from keras_siglip.data import shapes


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
    paths, labels = image_files
    choices = sorted(set(labels) | {"black cross", "white star"})
    cli.main(["zero-shot", *paths, "--labels", *choices, "--top-k", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == paths[0] and len(out) == 4 * len(paths)
    probabilities = [float(line.split()[0]) for line in out if not line.startswith("/")]
    assert all(0.0 <= p <= 1.0 for p in probabilities)


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
    assert accuracy > 0.8, text  # the shipped model is trained to > 90% on this task
    assert Image.open(out).size[0] > 100


def test_errors_are_clear(capsys, tmp_path):
    with pytest.raises(SystemExit, match="no such image file"):
        cli.main(["zero-shot", str(tmp_path / "missing.png"), "--labels", "a"])
    with pytest.raises(SystemExit, match="Unknown preset"):
        cli.main(["embed", "--texts", "a", "--preset", "siglip2_shapes_tiyn", "--out", str(tmp_path / "x.npy")])
