"""keras-hub SigLIP weights load into our backbone and give the same outputs."""

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_siglip.convert import assign_weights, keras_hub_weights
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.helpers import perturb


@pytest.fixture
def pair(rng):
    keras.utils.set_random_seed(0)
    theirs = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64,
            image_shape=(32, 32, 3),
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=50, embedding_dim=24, hidden_dim=24, num_layers=2, num_heads=2,
            intermediate_dim=48, max_sequence_length=8, projection_dim=32,
        ),
    )
    perturb(theirs, rng)
    ours = SigLIPBackbone(
        SigLIPVisionEncoder(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=32),
        SigLIPTextEncoder(vocabulary_size=50, width=24, depth=2, num_heads=2, mlp_dim=48, sequence_length=8, num_classes=32),
    )
    assign_weights(ours, keras_hub_weights(theirs))
    return theirs, ours


def test_same_outputs(pair, rng):
    theirs, ours = pair
    x = {
        "images": rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(0, 50, (3, 8)).astype("int32"),
    }
    expected = ops.convert_to_numpy(theirs(x)["vision_logits"])
    got = ops.convert_to_numpy(ours(x)["logits"])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # measured max |diff| ~1e-6


def test_mismatched_checkpoint_lists_names(pair):
    theirs, ours = pair
    weights = keras_hub_weights(theirs)
    weights.pop("vit/map_head/probe")
    weights["vit/extra"] = np.zeros(3)
    weights["transformer/head/bias"] = np.zeros(7)
    with pytest.raises(ValueError) as error:
        assign_weights(ours, weights)
    message = str(error.value)
    assert "vit/map_head/probe" in message and "vit/extra" in message
    assert "transformer/head/bias: checkpoint (7,)" in message
