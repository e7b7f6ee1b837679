import re

import pytest

from core.config import DEFAULTS, ConfigError, load_config


def test_defaults_are_the_papers_constants():
    cfg = load_config()
    assert cfg["optim"]["lr"] == 6e-5 and cfg["optim"]["weight_decay"] == 0.01
    assert cfg["optim"]["betas"] == [0.9, 0.999] and cfg["optim"]["warmup_iters"] == 1500
    assert cfg["optim"]["head_lr_mult"] == 10 and cfg["optim"]["norm_lr"] == 0.0
    assert cfg["train"]["max_iters"] == 20000 and cfg["train"]["cam_iters"] == 2000
    assert cfg["train"]["aff_label_iters"] == 6000
    assert cfg["cam"]["scales"] == [1.0, 0.5, 1.5]
    assert (cfg["cam"]["bg_thresh"], cfg["cam"]["high_thresh"], cfg["cam"]["low_thresh"]) == (
        0.45,
        0.55,
        0.35,
    )
    assert cfg["par"] == {
        "dilations": [1, 2, 4, 8, 12, 24],
        "iters": 10,
        "w1": 0.3,
        "w2": 0.01,
        "downscale": 2,
    }
    assert (
        cfg["affinity"]["radius"] == 8 and cfg["affinity"]["power"] == 2 and cfg["affinity"]["col_eps"] == 0.1
    )
    assert (cfg["loss"]["cls"], cfg["loss"]["seg"], cfg["loss"]["aff"], cfg["loss"]["reg"]) == (
        1.0,
        0.1,
        0.1,
        0.01,
    )
    assert cfg["infer"]["scales"] == [1.0, 0.5, 0.75]
    assert cfg["model"]["strides"] == [4, 2, 2, 1]
    assert cfg is not DEFAULTS and cfg["cam"] is not DEFAULTS["cam"]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_iters: 50\ncam:\n  scales: [1.0]\n")
    cfg = load_config(path, ["train.batch_size=3", "par.w1=0.5", "model.backbone=mit_b0"])
    assert cfg["train"]["max_iters"] == 50 and cfg["cam"]["scales"] == [1.0]
    assert (
        cfg["train"]["batch_size"] == 3 and cfg["par"]["w1"] == 0.5 and cfg["model"]["backbone"] == "mit_b0"
    )
    assert isinstance(load_config(None, ["par.w1=1"])["par"]["w1"], float)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.nonsense=1", "unknown config key 'train.nonsense'"),
        ("train.batch_size=abc", "must be a number"),
        ("train.flip=1", "unknown"),
        ("data.flip=1", "true or false"),
        ("data.crop_size=100", "multiple of 16"),
        ("train.mode=weird", "train.mode"),
        ("cam.low_thresh=0.9", "thresholds"),
        ("train.batch_size", "key.sub=value"),
    ],
)
def test_bad_configs_name_the_key(override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads "1e-3" as a string; a numeric key takes it as the number it means
    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=5E-2"])
    assert cfg["optim"]["lr"] == pytest.approx(0.001) and cfg["optim"]["weight_decay"] == pytest.approx(0.05)
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 2e-4\n")
    assert load_config(path)["optim"]["lr"] == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(None, ["optim.lr=1e-3x"])
    assert load_config(None, ["model.backbone=1e3"])["model"]["backbone"] == "1e3"
    assert load_config(None, ["train.max_iters=2e3"])["train"]["max_iters"] == 2000
    assert isinstance(load_config(None, ["train.max_iters=2e3"])["train"]["max_iters"], int)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.batch_size=2.5", "'train.batch_size' must be a whole number, got 2.5"),
        ("train.max_iters=10.5", "'train.max_iters' must be a whole number"),
        ("par.iters=1e-1", "'par.iters' must be a whole number"),
        ("train.eval_limit=0.5", "'train.eval_limit' must be a whole number"),
        ("optim.lr=-0.001", "optim.lr must be positive"),
        ("optim.lr=0", "optim.lr must be positive"),
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("optim.weight_decay=-1", "weight_decay"),
        ("train.device=tpu", "train.device must be auto, cpu or cuda, got 'tpu'"),
        ("data.on_corrupt=ignore", "data.on_corrupt must be stop or skip"),
        ("data.num_workers=-1", "data.num_workers"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(None, [override])


def test_integer_keys_take_integer_valued_numbers_as_ints(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 4.0\n  eval_limit: null\n")
    cfg = load_config(path, ["train.max_iters=30.0"])
    assert cfg["train"]["batch_size"] == 4 and isinstance(cfg["train"]["batch_size"], int)
    assert cfg["train"]["max_iters"] == 30 and isinstance(cfg["train"]["max_iters"], int)
    assert cfg["train"]["eval_limit"] is None
    assert isinstance(load_config(None, ["optim.lr=1"])["optim"]["lr"], float)  # float keys stay floats


def test_stretched_schedule_keeps_each_phase_share():
    from core.config import stretched_schedule

    paper = load_config(None)  # 20000 iterations: classification alone 2000, AFA labels 6000, warm-up 1500
    assert stretched_schedule(paper, 1000) == {
        "train.cam_iters": 100, "train.aff_label_iters": 300, "optim.warmup_iters": 75}
    assert stretched_schedule(paper, 20000) == {
        "train.cam_iters": 2000, "train.aff_label_iters": 6000, "optim.warmup_iters": 1500}
    assert stretched_schedule(paper, 30) == {  # 3, 9, 2.25 -> 2
        "train.cam_iters": 3, "train.aff_label_iters": 9, "optim.warmup_iters": 2}
    with pytest.raises(ConfigError):
        stretched_schedule(paper, 0)


def test_differences_name_each_changed_leaf_with_both_values():
    from core.config import differences

    old = load_config(None, ["train.max_iters=1200", "model.backbone=mit_b0"])
    new = load_config(None, ["train.max_iters=2400", "model.backbone=mit_b0", "train.use_reg=false"])
    assert differences(old, new) == ["train.max_iters: 1200 -> 2400", "train.use_reg: True -> False"]
    assert differences(new, new) == []
    assert differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: None -> 2"]


def test_cli_compares_a_config_with_a_runs_config_yaml(tmp_path, capsys):
    import yaml

    from core.config import main

    saved = tmp_path / "config.yaml"  # as core.train writes it into a run folder
    saved.write_text(yaml.safe_dump(load_config("core/configs/scenes.yaml", ["train.max_iters=1200"])))
    assert main(["core/configs/scenes.yaml", "train.max_iters=1200", "--against", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == "same config"
    default = load_config("core/configs/scenes.yaml")["train"]["max_iters"]
    assert main(["core/configs/scenes.yaml", "--against", str(saved)]) == 1
    assert capsys.readouterr().out.strip() == f"train.max_iters: 1200 -> {default}"
    assert main(["core/configs/scenes.yaml"]) == 0  # no --against: the resolved config, YAML
    assert yaml.safe_load(capsys.readouterr().out) == load_config("core/configs/scenes.yaml")
    assert main(["core/configs/scenes.yaml", "--against", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
