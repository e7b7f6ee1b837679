"""The Dataset tab on the real core (tiny random checkpoints, a tiny generated dataset): its
numbers are python -m core.evaluate's, it is cached on disk and resumes, its table sorts and
filters, and a row opens in Inspect with the ground truth and the table's scores."""

import csv
import json

import numpy as np
import pytest

from app import dataset_view, evaluations
from app.checkpoints import CHECKPOINTS
from app.dataset_view import ANY_CLASS, on_csv, on_dataset, on_evaluate, on_extreme, on_pick, on_table_options
from app.evaluations import EVALUATIONS, GAINS, known_datasets, resolve_dataset
from app.state import Session
from core.errors import UserError

GAIN = GAINS[1][0]  # rw_afa - par


def _ids(tiny_dataset):
    return f"{tiny_dataset}@val", CHECKPOINTS.default("afa")


def _evaluate(tiny_dataset, sort_by=GAIN, descending=True, class_filter=ANY_CLASS, name=""):
    dataset, checkpoint = _ids(tiny_dataset)
    views = on_evaluate(dataset, checkpoint, False, sort_by, descending, class_filter, name)
    assert "ds_state" in views, views.get("ds_status")
    return views, EVALUATIONS.get(views["ds_state"])


def test_dataset_numbers_are_core_evaluates(real_env, tiny_dataset):
    from core.evaluate import main

    views, ev = _evaluate(tiny_dataset)
    assert ev.complete and len(ev.names) == 6
    out = real_env / "core.json"
    checkpoint = CHECKPOINTS.resolve(CHECKPOINTS.default("afa")).path
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(tiny_dataset),
                "--split",
                "val",
                "--per-image",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    totals = ev.totals()
    assert (
        set(totals)
        == set(result["stages"])
        == {"cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label"}
    )
    for stage, expected in result["stages"].items():
        assert totals[stage] == expected, stage  # the same confusion matrices, summed: equal floats
        miou = expected["miou"]
        assert f"{100 * miou:.1f}" in views["ds_totals"]
    # the error rows are core's shares of the same matrices, stage by stage, in the header's order
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in views["ds_totals"].splitlines()
        if line.startswith("|"))}
    columns = [dataset_view.STAGE_COLUMNS[s] for s in ev.stages]
    assert rows[""] == columns
    kinds = [k for k in ("false positive", "false negative", "wrong class") if any(
        result["stages"][s]["errors"][k] for s in ev.stages)]
    assert kinds, "a random model errs: the comparison is not vacuous"
    for kind in kinds:
        label = next(r for r in rows if r.startswith(kind + " (% of"))
        assert rows[label] == [f"{100 * result['stages'][s]['errors'][kind]:.1f}" for s in ev.stages]
    for i, name in enumerate(ev.names):  # and image by image
        for stage, entry in result["per_image"][name]["stages"].items():
            assert ev.miou[stage][i] == pytest.approx(entry["miou"], nan_ok=True)
    assert np.nanmean(ev.cls_f1) == pytest.approx(result["cls_f1"])
    # the class confusion: core's per-image matrices summed, as each true class's % by predicted
    # class; the segmentation by default, another stage on request, rows labelled with their area
    assert views["ds_conf_stage"]["value"] == "seg_label"
    par = dataset_view.on_confusion_stage(views["ds_state"], "par_label")["ds_confusion"]
    for stage, figure in (("seg_label", views["ds_confusion"]), ("par_label", par)):
        counts = sum(np.array(result["per_image"][n]["stages"][stage]["confusion"]) for n in ev.names)
        present = counts.sum(1) > 0
        expected = 100 * counts[present] / counts[present].sum(1, keepdims=True)
        heat = figure.data[0]
        assert list(heat.x) == result["classes"]  # dense labels: no "none" column
        np.testing.assert_allclose(np.array(heat.z), expected)
        area = counts.sum(0)[present] / counts.sum(1)[present]
        names = np.array(result["classes"])[present]
        assert list(heat.y) == [f"{n} (area x{a:.2f})" for n, a in zip(names, area)]
    assert dataset_view.on_confusion_stage(views["ds_state"], "no_such_stage") == {}


def test_evaluation_is_kept_on_disk_and_resumes(real_env, tiny_dataset, monkeypatch):
    from app.backend import BACKEND

    real = BACKEND.evaluate_images
    seen: list[list[int]] = []

    def interrupted(model, dataset, cfg, indices, crf):
        seen.append(list(indices))
        for n, item in enumerate(real(model, dataset, cfg, indices, crf)):
            if n == 3:
                raise RuntimeError("the server went down")
            yield item

    monkeypatch.setattr(evaluations, "SAVE_EVERY_S", 0.0)  # save after every image
    monkeypatch.setattr(BACKEND, "evaluate_images", interrupted)
    dataset, checkpoint = _ids(tiny_dataset)
    failed = on_evaluate(dataset, checkpoint, False, GAIN, True, ANY_CLASS, "")
    assert failed["ds_status"].startswith("⚠️")
    assert list((real_env / "evaluations").glob("*.partial.npz"))
    EVALUATIONS.clear_memory()  # as after a restart
    monkeypatch.setattr(BACKEND, "evaluate_images", lambda *a: (seen.append(list(a[3])), real(*a))[1])
    views = on_evaluate(dataset, checkpoint, False, GAIN, True, ANY_CLASS, "")
    assert seen == [[0, 1, 2, 3, 4, 5], [3, 4, 5]]  # the first three images were not redone
    assert len(views["ds_table"]) == 6 and not list((real_env / "evaluations").glob("*.partial.npz"))

    def no_model(*args):
        raise AssertionError("a cached evaluation must not run the model")

    EVALUATIONS.clear_memory()
    monkeypatch.setattr(BACKEND, "evaluate_images", no_model)
    shown = on_pick(dataset, checkpoint, False, GAIN, True, ANY_CLASS, "")  # picking shows it at once
    assert shown["ds_state"] == views["ds_state"] and shown["ds_totals"] == views["ds_totals"]
    again = on_evaluate(dataset, checkpoint, False, GAIN, True, ANY_CLASS, "")
    assert again["ds_totals"] == views["ds_totals"]


def test_table_sorts_filters_and_exports(real_env, tiny_dataset):
    views, ev = _evaluate(tiny_dataset)
    table = views["ds_table"]
    assert list(table.columns) == [
        "image",
        "labels",
        "cam",
        "par",
        "rw_mhsa",
        "rw_afa",
        "seg",
        *[g[0] for g in GAINS],
    ]
    for column, _, _ in GAINS:
        rows = on_table_options(ev.key, column, True, ANY_CLASS, "")["ds_table"]
        values = [v for v in rows[column] if v == v]
        assert values == sorted(values, reverse=True), column
        expected = sorted(np.round(ev.gain(column)[np.isfinite(ev.gain(column))], 1), reverse=True)
        assert values == pytest.approx(expected)
        up = on_table_options(ev.key, column, False, ANY_CLASS, "")["ds_table"]
        assert [v for v in up[column] if v == v] == sorted(values)
    a_class = next(c for i, c in enumerate(ev.classes[1:]) if ev.present[:, i].any())
    only = on_table_options(ev.key, GAIN, True, a_class, "")["ds_table"]
    assert 0 < len(only) == int(ev.present[:, ev.classes.index(a_class) - 1].sum())
    assert all(a_class in labels.split(", ") for labels in only["labels"])
    named = on_table_options(ev.key, "image", False, ANY_CLASS, ev.names[2])["ds_table"]
    assert list(named["image"]) == [ev.names[2]]
    path = on_csv(ev.key, GAIN, True, a_class, "")["ds_csv"]["value"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(table.columns) and [r[0] for r in rows[1:]] == list(only["image"])


def test_best_and_worst_are_one_click_away(real_env, tiny_dataset):
    views, ev = _evaluate(tiny_dataset)
    gain = ev.gain(GAIN)
    worst = ev.names[int(np.nanargmin(gain))]
    assert worst in views["ds_worst_1"]["value"] and views["ds_worst_1"]["interactive"]
    opened = on_extreme(1, "worst", ev.key, Session(), 0.5, False)
    assert opened["session"].truth.name == worst


def test_a_row_opens_in_inspect_with_its_ground_truth_and_the_tables_scores(
    real_env, tiny_dataset, monkeypatch
):
    from app import backend

    # exact passes: under bf16 the Inspect analysis (which also captures every attention map) may
    # round differently from the evaluation (app.evaluations' docstring)
    monkeypatch.setattr(backend, "PRECISION", "fp32")
    views, ev = _evaluate(tiny_dataset)
    assert ev.info["precision"] == "fp32"
    row = views["ds_table"].iloc[0]
    opened = dataset_view.open_in_inspect(ev.key, row["image"], Session(), 0.5, False)
    session = opened["session"]
    assert opened["tabs"].selected == "inspect"
    assert session.truth is not None and session.label_mode == "true" and session.dense
    assert session.truth.name == row["image"] and "Ground truth" in opened["truth_note"]
    assert np.array_equal(opened["image"], session.image)
    assert "true labels" in opened["status"]
    # the scores under the maps are this image's numbers in the table: the same analysis, scored alike
    from app.analysis import cached
    from app.truth import stage_scores

    index = ev.names.index(row["image"])
    scores = stage_scores(cached(session, "afa"), session.truth)
    assert set(scores) == set(ev.stages)
    for stage, cm in scores.items():
        assert cm.miou() == pytest.approx(ev.miou[stage][index], nan_ok=True), stage
    for view, stage in (("score_cam", "cam_label"), ("score_afa", "rw_afa_label"), ("seg_note", "seg_label")):
        assert f"mIoU {100 * ev.miou[stage][index]:.1f}" in opened[view], view


def test_only_checkpoints_of_the_datasets_classes_are_offered(real_env, tiny_dataset, tmp_path, monkeypatch):
    from tests.app.helpers import make_tiny_checkpoints

    other = tmp_path / "other"
    other.mkdir()
    (other / "classes.txt").write_text("background\ncat\ndog\nbird\nfish\nbag\n")
    folder = make_tiny_checkpoints(tmp_path / "other_ckpts", tiny_dataset, seeds=(5,))
    # a checkpoint whose class names differ (same count): rename them in its metadata
    from core.checkpoint import load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(folder / "tiny_afa_s5.safetensors")
    meta["classes"] = ["background", "cat", "dog", "bird", "fish", "bag"]
    save_checkpoint(folder / "afa_pets.safetensors", state, meta)
    (folder / "tiny_afa_s5.safetensors").unlink()
    import os

    monkeypatch.setenv(
        "AFA_APP_CHECKPOINT_DIRS", os.pathsep.join([os.environ["AFA_APP_CHECKPOINT_DIRS"], str(folder)])
    )
    CHECKPOINTS.refresh()
    dataset, _ = _ids(tiny_dataset)
    views = on_dataset(dataset, False, GAIN, True, ANY_CLASS, "")
    offered = [value for _, value in views["ds_ckpt"]["choices"]]
    assert offered and not any("afa_pets" in c for c in offered)
    pets = next(c.id for c in CHECKPOINTS.all() if "afa_pets" in c.id)
    # a checkpoint that appears later is offered after a rescan, the one picked stays picked
    new = make_tiny_checkpoints(tmp_path / "later", tiny_dataset, seeds=(7,))
    monkeypatch.setenv(
        "AFA_APP_CHECKPOINT_DIRS", os.pathsep.join([os.environ["AFA_APP_CHECKPOINT_DIRS"], str(new)])
    )
    rescanned = dataset_view.on_rescan(dataset, offered[-1])["ds_ckpt"]
    assert len(rescanned["choices"]) == len(offered) + 1 and rescanned["value"] == offered[-1]
    refused = on_evaluate(dataset, pets, False, GAIN, True, ANY_CLASS, "")
    assert refused["ds_status"].startswith("⚠️") and "cat" in refused["ds_status"]


def test_public_mode_offers_only_the_bundled_subset(real_env, tiny_dataset):
    public = known_datasets(public=True)
    assert public and all(d.bundled and d.id.startswith("assets/datasets/") for d in public)
    assert len(list((public[0].root / "JPEGImages").iterdir())) <= 100
    with pytest.raises(UserError):
        resolve_dataset(f"{tiny_dataset}@val", public=True)
    assert resolve_dataset(f"{tiny_dataset}@val").root == tiny_dataset
