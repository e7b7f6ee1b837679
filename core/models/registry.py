"""Create a model by name from a config (timm's idea: a registry, names in configs)."""

from __future__ import annotations

from core.models.afa import AFANet

MODEL_KINDS = ("afa", "cnn_cam")


def create_model(cfg: dict, classes: list[str] | None = None) -> AFANet:
    """Build the network described by ``cfg`` (a full config, or just its ``model`` section)."""
    from core.config import DEFAULTS
    from core.models.encoders import create_encoder

    model_cfg = cfg.get("model", cfg)
    kind = model_cfg.get("name", "afa")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model name {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    encoder = create_encoder(
        model_cfg["backbone"],
        strides=tuple(model_cfg.get("strides", DEFAULTS["model"]["strides"])),
        drop_path_rate=model_cfg.get("drop_path_rate", 0.1),
        pretrained=model_cfg.get("pretrained"),
    )
    model = AFANet(
        encoder,
        num_classes=model_cfg["num_classes"],
        decoder_dim=model_cfg.get("decoder_dim", 256),
        decoder_dropout=model_cfg.get("decoder_dropout", 0.1),
        aff_blocks=model_cfg.get("aff_blocks", 2),
        kind=kind,
        pooling=model_cfg.get("pooling", "gmp"),
    )
    data_cfg = cfg.get("data", DEFAULTS["data"])
    model.mean = list(data_cfg.get("mean", DEFAULTS["data"]["mean"]))
    model.std = list(data_cfg.get("std", DEFAULTS["data"]["std"]))
    n = model_cfg["num_classes"]
    model.classes = list(classes) if classes else ["background"] + [f"class{i}" for i in range(1, n)]
    if len(model.classes) != n:
        raise ValueError(f"{len(model.classes)} class names given for num_classes={n}")
    return model
