"""Create a model by name from a config (timm's idea: a registry, names in configs)."""

from __future__ import annotations

from core.config import DEFAULTS, TRAINING_MODES
from core.models.afa import AFANet


def create_model(cfg: dict, classes: list[str] | None = None) -> AFANet:
    """Build the network described by ``cfg`` (a full config, or just its ``model`` section);
    a setting it leaves out has its ``DEFAULTS`` value."""
    from core.models.encoders import create_encoder

    m = {**DEFAULTS["model"], **cfg.get("model", cfg)}
    if m["name"] not in TRAINING_MODES:
        raise ValueError(f"unknown model name {m['name']!r}; choose one of {', '.join(TRAINING_MODES)}")
    encoder = create_encoder(
        m["backbone"], tuple(m["strides"]), drop_path_rate=m["drop_path_rate"], pretrained=m["pretrained"]
    )
    heads = {key: m[key] for key in ("decoder_dim", "decoder_dropout", "aff_blocks", "pooling")}
    model = AFANet(encoder, num_classes=m["num_classes"], kind=m["name"], **heads)
    data = {**DEFAULTS["data"], **cfg.get("data", {})}
    model.mean, model.std = list(data["mean"]), list(data["std"])
    n = m["num_classes"]
    model.classes = list(classes) if classes else ["background"] + [f"class{i}" for i in range(1, n)]
    if len(model.classes) != n:
        raise ValueError(f"{len(model.classes)} class names given for num_classes={n}")
    return model
