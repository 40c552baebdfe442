import keras
import pytest


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    """Tests here may set a global mixed policy; every test ends with the one it found."""
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
