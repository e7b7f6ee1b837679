"""core.catalog: the names core offers front ends, and the rules behind them."""

import pytest

from core import catalog
from core.config import ConfigError, load_config


def test_encoders_transformers_first_and_the_model_each_trains():
    names = catalog.available_encoders()
    assert {"mit_b0", "mit_b5", "vit_small", "resnet10t", "resnet50"} <= set(names)
    kinds = [catalog.model_for_encoder(n) for n in names]
    assert kinds == sorted(kinds)  # every "afa" encoder before every "cnn_cam" one
    assert catalog.model_for_encoder("resnet18") == "cnn_cam" and catalog.model_for_encoder("mit_b1") == "afa"


def test_modes_follow_the_config_rule():
    assert catalog.training_modes("afa")[0] == "afa" and catalog.training_modes("cnn_cam") == ("cam",)
    for model in ("afa", "cnn_cam"):
        for mode in ("afa", "cam", "supervised"):
            overrides = [f"model.name={model}", f"train.mode={mode}"]
            if mode in catalog.training_modes(model):
                assert load_config(None, overrides)["train"]["mode"] == mode
            else:
                with pytest.raises(ConfigError, match="train.mode must be"):
                    load_config(None, overrides)


def test_datasets_that_train_have_a_config():
    assert "folder" not in catalog.trainable_datasets()
    for name in catalog.trainable_datasets():
        assert load_config(catalog.dataset_config(name))["data"]["name"] == name
    with pytest.raises(ConfigError, match="no training config"):
        catalog.dataset_config("folder")
