"""What core offers by name, for front ends: encoders, the model each one trains, training modes,
datasets and their configs.

The app builds its choices from these functions, so an encoder registered with
``core.models.encoders.register_encoder`` or a dataset added to ``core.data.TRAIN_DATASETS``
appears there without a change to the app.
"""

from __future__ import annotations

from pathlib import Path

from core.config import CONFIG_DIR, TRAINING_MODES, ConfigError


def available_encoders() -> list[str]:
    """Every registered encoder name: the Transformers (which give attention) first, then the CNNs."""
    from core.models.encoders import ENCODERS

    return sorted(ENCODERS, key=lambda name: (model_for_encoder(name) != "afa", name))


def model_for_encoder(encoder: str) -> str:
    """The ``model.name`` an encoder trains: a CNN (no attention) only the CNN CAM baseline."""
    from core.models.cnn import CNN_MODELS

    return "cnn_cam" if encoder in CNN_MODELS else "afa"


def training_modes(model: str = "afa") -> tuple[str, ...]:
    """The ``train.mode`` values a model can be trained with; the first is its default."""
    return TRAINING_MODES[model]


def trainable_datasets() -> tuple[str, ...]:
    """The ``data.name`` values ``core.train`` accepts (an image folder has no labels: not one)."""
    from core.data import TRAIN_DATASETS

    return TRAIN_DATASETS


def dataset_config(dataset: str) -> Path:
    """The shipped config that trains on ``dataset`` (``core/configs/<dataset>.yaml``)."""
    path = CONFIG_DIR / f"{dataset}.yaml"
    if dataset not in trainable_datasets() or not path.is_file():
        choices = ", ".join(trainable_datasets())
        raise ConfigError(f"no training config for dataset {dataset!r}; choose one of {choices}")
    return path
