import pytest

from tests.train.toy_model import tiny_store


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """MOSI-shaped aligned synthetic store: 64 / 11 / 34 samples, audio 5, vision 20, length 50."""
    return tiny_store(tmp_path_factory.mktemp("data") / "tiny.h5")


@pytest.fixture
def cfg():
    from msa_fast.train.configs import resolve_config

    return resolve_config(model_cfg={}, extra={"epochs": 2, "batch_size": 16, "compile": False, "progress": False,
                                               "lr": 1e-2, "log_every": 1})
