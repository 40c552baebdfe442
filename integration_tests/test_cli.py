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

    np.savez(tmp_path / "vae-oid.npz", **{"_vq_vae._embedding": np.zeros((128, 8), "float32")})
    with pytest.raises(ValueError, match="segmentation VQ-VAE"):
        cli.main(["convert", str(tmp_path / "vae-oid.npz"), str(tmp_path / "x")])
    np.savez(tmp_path / "odd.npz", **{"params/foo/w": np.zeros(2, "float32")})
    with pytest.raises(ValueError, match=r"not a big_vision checkpoint layout.*found \['foo'\]"):
        cli.main(["convert", str(tmp_path / "odd.npz"), str(tmp_path / "x")])
    with pytest.raises(ValueError, match="tokenizer is supported for SigLIP"):
        cli.main(["convert", npz, str(tmp_path / "x"), "--tokenizer", npz])
    assert not (tmp_path / "x").exists()
