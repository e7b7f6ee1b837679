"""``python -m core.evaluate`` on tiny checkpoints: every stage the model can compute, in JSON."""

from __future__ import annotations

import json

import pytest
import torch

from core.config import load_config
from core.data import class_names
from core.evaluate import STAGES, evaluate_images, headline_miou, infer_dataset_kind, main, open_evaluation
from core.method.metrics import ConfusionMatrix
from core.models.registry import create_model
from core.runstate import save_model_checkpoint

from .conftest import TINY


def _checkpoint(tmp_path, root, *overrides: str):
    cfg = load_config(TINY, [f"data.root={root}", *overrides])
    torch.manual_seed(0)
    model = create_model(cfg, classes=class_names(cfg))
    return save_model_checkpoint(tmp_path / "model.safetensors", model, cfg, step=0)


@pytest.mark.slow
def test_evaluate_cli_reports_every_stage(tmp_path, tiny_scenes, capsys):
    ckpt = _checkpoint(tmp_path, tiny_scenes)
    out = tmp_path / "result.json"
    assert main(["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--split", "val", "--crf",
                 "--limit", "2", "--out", str(out), "--precision", "fp32", "--per-image"]) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 2 and result["split"] == "val" and result["dataset_kind"] == "scenes"
    assert result["labels"] == "dense"
    assert result["precision"] == "fp32" and result["seg_merge"] == "max"  # the authors' merge by default
    assert set(result["stages"]) == set(STAGES)
    names = class_names(load_config(TINY, [f"data.root={tiny_scenes}"]))
    assert result["classes"] == names  # in matrix order, although the file's keys are written sorted
    for stage in STAGES:
        entry = result["stages"][stage]
        assert set(entry["per_class"]) == set(names)
        assert entry["miou"] is None or 0.0 <= entry["miou"] <= 1.0
    assert 0.0 <= result["cls_f1"] <= 1.0
    assert result["seconds"] > 0 and result["images_per_s"] > 0
    assert "cam_label" in json.loads(capsys.readouterr().out)["miou"]
    # --per-image: the images' confusion matrices sum to the dataset's scores
    per_image = result["per_image"]
    assert len(per_image) == 2
    for stage in STAGES:
        total = ConfusionMatrix(len(names))
        for entry in per_image.values():
            image = entry["stages"][stage]
            one = ConfusionMatrix.from_counts(image["confusion"], image["unpredicted"])
            assert image["miou"] == pytest.approx(one.miou())
            assert set(image["per_class"]) == {n for n, v in zip(names, one.iou()) if v == v}
            total.merge(one)
        assert total.as_dict(names) == result["stages"][stage]
    for entry in per_image.values():
        assert set(entry["labels"]) <= set(names[1:]) and 0.0 <= entry["cls_f1"] <= 1.0


def test_extra_stages_are_scored_against_the_mask_like_the_models_own(tmp_path, tiny_scenes):
    """``evaluate_images(extra_stages=...)``: each function gets the image's analysis and mask; its
    label is scored like the model's stages (the mask itself scores a diagonal matrix, a copy of
    par_label the same matrix as par_label), and an image it returns None for is left out."""
    from core import load_model

    ckpt = _checkpoint(tmp_path, tiny_scenes)
    cfg, dataset = open_evaluation(str(ckpt), str(tiny_scenes), "val")
    model = load_model(str(ckpt), device="cpu")
    extra = {"truth": lambda a, gt: gt, "par_again": lambda a, gt: a.par_label,
             "nothing": lambda a, gt: None}
    for ev in evaluate_images(model, dataset, cfg, [0, 1], scales=[1.0], precision="fp32",
                              extra_stages=extra):
        truth = ev.confusions["truth"].matrix
        assert truth.sum() > 0 and (truth == torch.diag(torch.as_tensor(truth).diagonal()).numpy()).all()
        assert (ev.confusions["par_again"].matrix == ev.confusions["par_label"].matrix).all()
        assert "nothing" not in ev.confusions


@pytest.mark.slow
def test_evaluate_skips_stages_a_cnn_cannot_compute(tmp_path, tiny_scenes):
    ckpt = _checkpoint(tmp_path, tiny_scenes, "model.name=cnn_cam", "model.backbone=resnet18",
                       "train.mode=cam")
    out = tmp_path / "cnn.json"
    args = ["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--limit", "1", "--out", str(out)]
    assert main(args) == 0
    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"cam_label", "par_label"}
    # --labels train changes the refined stages only (the CAM label has one background score)
    out_train = tmp_path / "cnn_train.json"
    assert main([*args[:-1], str(out_train), "--labels", "train"]) == 0
    train = json.loads(out_train.read_text())
    assert train["labels"] == "train"
    assert json.loads(out.read_text())["precision"] in ("bf16", "fp32")  # auto: what this CPU runs
    assert train["stages"]["cam_label"] == stages["cam_label"]


def test_evaluate_errors_are_one_line(tmp_path, tiny_scenes, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.safetensors"), "--data", str(tiny_scenes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m core.evaluate: error: ") and err.count("\n") == 1
    assert main(["--checkpoint", "x.safetensors", "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_evaluate_refuses_a_dataset_of_other_classes(tmp_path, tiny_scenes, capsys):
    cfg = load_config(TINY, [f"data.root={tiny_scenes}"])
    renamed = ["background"] + [f"other{i}" for i in range(1, len(class_names(cfg)))]  # same count
    model = create_model(cfg, classes=renamed)
    ckpt = save_model_checkpoint(tmp_path / "renamed.safetensors", model, cfg, step=0)
    assert main(["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other1" in err and class_names(cfg)[1] in err


def test_dataset_kind_from_layout(tmp_path, tiny_scenes):
    assert infer_dataset_kind(tiny_scenes) == "scenes"
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)
    assert infer_dataset_kind(tmp_path / "voc") == "voc"
    (tmp_path / "coco" / "JPEGImages" / "val2014").mkdir(parents=True)
    assert infer_dataset_kind(tmp_path / "coco") == "coco"
    assert infer_dataset_kind(tmp_path, hint="coco") == "coco"


def test_headline_miou_is_the_segmentation_else_the_best_pseudo_label():
    afa = {"cam_label": 0.41, "par_label": 0.49, "rw_afa_label": 0.31, "seg_label": 0.2, "seg_crf_label": 0.3}
    assert headline_miou(afa) == ("seg_label", 0.2)  # not the first (cam_label), not the highest
    assert headline_miou({"cam_label": 0.41, "par_label": 0.63}) == ("par_label", 0.63)  # a CAM-only model
    assert headline_miou({"cam_label": None, "par_label": float("nan")}) is None
    assert headline_miou(0.5) == ("miou", 0.5) and headline_miou(None) is None and headline_miou(True) is None


def test_set_changes_only_the_named_method_setting(tmp_path, tiny_scenes, capsys):
    ckpt = _checkpoint(tmp_path, tiny_scenes)
    results = {}
    for radius in (1, 30):
        out = tmp_path / f"r{radius}.json"
        assert main(["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--limit", "2", "--precision",
                     "fp32", "--set", f"affinity.radius={radius}", "--out", str(out)]) == 0
        results[radius] = json.loads(out.read_text())
    assert results[1]["settings"] == ["affinity.radius=1"]
    # the CAM does not depend on the radius; the walk does (radius 1: 3x3 neighbourhoods only)
    assert results[1]["stages"]["cam_label"] == results[30]["stages"]["cam_label"]
    assert results[1]["stages"]["rw_afa_label"] != results[30]["stages"]["rw_afa_label"]
    # only method sections, and values are validated like a config file
    for bad in ("model.backbone=mit_b5", "affinity.radius=0"):
        assert main(["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
