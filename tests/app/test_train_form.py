"""The Train tab's form -> core.train config and overrides: core's lists and rules, the public caps."""

import pytest

from app import train_form as F
from core import catalog
from core.config import load_config
from core.errors import UserError


@pytest.fixture
def root(tmp_path):
    """An app root with an (empty) scenes folder where the trainer would look."""
    scenes = load_config(catalog.dataset_config("scenes"))["data"]["root"]
    (tmp_path / scenes).mkdir(parents=True)
    return tmp_path


def overrides(form, root, public=False):
    return F.build_overrides(form, public, root)


def test_missing_scenes_data_is_left_to_start(tmp_path):
    # no data on this server: the form is still valid (Start generates the data) and writes nothing
    config, args, _ = overrides(F.TrainForm(), tmp_path, public=True)
    assert load_config(config, args)["data"]["name"] == "scenes" and list(tmp_path.iterdir()) == []


def test_overrides_are_valid_core_config(root):
    config, args, notes = overrides(F.TrainForm(iters=100, batch=2, crop=128, w_aff=0.2), root)
    assert config == str(catalog.dataset_config("scenes")) and not notes
    assert "train.max_iters=100" in args and "loss.aff=0.2" in args and "model.backbone=mit_b0" in args
    cfg = load_config(config, args)  # core accepts every key the form writes
    assert cfg["train"]["max_iters"] == 100 and cfg["data"]["crop_size"] == 128 and cfg["loss"]["aff"] == 0.2


def test_cnn_encoder_trains_cam_only(root):
    _, args, notes = overrides(F.TrainForm(encoder="resnet18", mode="afa"), root)
    assert "model.name=cnn_cam" in args and "train.mode=cam" in args
    assert notes == ["resnet18 trains with mode cam only (cnn_cam)"]


def test_the_form_offers_what_core_offers():
    assert F.encoder_choices(public=False) == catalog.available_encoders()
    assert "folder" not in F.dataset_choices(public=False)  # training refuses an unlabelled folder
    assert set(F.dataset_choices(public=False)) == set(catalog.trainable_datasets())


def test_an_encoder_registered_in_core_appears_without_an_app_change(root, monkeypatch):
    from core.models import encoders

    monkeypatch.setitem(encoders.ENCODERS, "mit_b0_copy", encoders.ENCODERS["mit_b0"])
    assert "mit_b0_copy" in F.encoder_choices(public=False)
    assert "mit_b0_copy" not in F.encoder_choices(public=True)  # the public demo's short list
    _, args, _ = overrides(F.TrainForm(encoder="mit_b0_copy"), root)
    assert "model.backbone=mit_b0_copy" in args and "model.name=afa" in args


def test_public_mode_caps_and_refuses(root):
    _, args, notes = overrides(F.TrainForm(iters=99999, batch=64, crop=512), root, public=True)
    limits = F.PUBLIC_LIMITS
    assert f"train.max_iters={limits['iters']}" in args
    assert f"train.batch_size={limits['batch']}" in args and f"data.crop_size={limits['crop']}" in args
    assert len(notes) == 3
    with pytest.raises(UserError, match="scenes benchmark only"):
        overrides(F.TrainForm(dataset="voc"), root, public=True)
    with pytest.raises(UserError, match="not available"):
        overrides(F.TrainForm(encoder="mit_b5"), root, public=True)
    _, args, _ = overrides(F.TrainForm(dataset="scenes", data_root="/etc"), root, public=True)
    assert not any(o.startswith("data.root") for o in args)


@pytest.mark.parametrize(
    "form, message",
    [
        (F.TrainForm(crop=100), "data.crop_size must be a multiple of 16"),
        (F.TrainForm(iters=0), "train.max_iters must be at least 1"),
        (F.TrainForm(w_seg=-1), "loss.seg .* must not be negative"),
        (F.TrainForm(dataset="folder"), "cannot be trained on"),
        (F.TrainForm(encoder="resnet999"), "not available"),
    ],
)
def test_bad_settings_are_messages(root, form, message):
    with pytest.raises(UserError, match=message):
        overrides(form, root)


def test_run_names():
    assert F.new_run_name(F.TrainForm(name="my run")) == "my-run"
    assert F.new_run_name(F.TrainForm()).startswith("mit_b0-")
    with pytest.raises(UserError, match="run name"):
        F.new_run_name(F.TrainForm(name="../../etc"))


def test_a_run_of_another_length_keeps_the_recipes_phase_shares(root):
    """The recipe's classification-only phase, AFA-label start and warm-up scale with the form's
    length (a short public run must still train its decoder: cam_iters below max_iters)."""
    recipe = load_config(catalog.dataset_config("scenes"))
    base = recipe["train"]["max_iters"]
    for iters in (300, base, 2 * base):
        config, args, _ = overrides(F.TrainForm(iters=iters), root)
        cfg = load_config(config, args)
        t = cfg["train"]
        assert t["max_iters"] == iters
        for key, part in (("cam_iters", recipe["train"]["cam_iters"]),
                          ("aff_label_iters", recipe["train"]["aff_label_iters"])):
            assert abs(t[key] / iters - part / base) <= 0.5 / iters  # the same share, rounded
        warmup = recipe["optim"]["warmup_iters"]
        assert abs(cfg["optim"]["warmup_iters"] / iters - warmup / base) <= 0.5 / iters
        assert 0 < t["cam_iters"] < t["aff_label_iters"] < iters
    _, args, _ = overrides(F.TrainForm(iters=base), root)
    assert f"train.cam_iters={recipe['train']['cam_iters']}" in args  # the recipe's own length: unchanged
