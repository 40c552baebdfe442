import os

import numpy as np
import pytest

from tests.helpers import train_sentencepiece

# Tests never reach a real hub: a published card's name fails at once instead of
# downloading (tests/test_hub.py lifts this for its Hub on 127.0.0.1).
os.environ["KERAS_SIGLIP_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def t5_proto():
    return train_sentencepiece("t5")


@pytest.fixture(scope="session")
def gemma_proto():
    return train_sentencepiece("gemma")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
