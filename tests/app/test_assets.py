"""scripts/make_examples.py (examples with ground truth, the bundled subset) and the authors'
converted VOC checkpoint in the app (listed, described and analysed with the 21 VOC names)."""

import json

import numpy as np
import torch

from tests.scripts import load_script


def _script():
    return load_script("make_examples")


def test_make_examples_copies_images_masks_and_labels(tiny_dataset, tmp_path, monkeypatch, capsys):
    from app import backend
    from app.truth import read_example_truth
    from core.io import read_mask

    script = _script()
    names = (tiny_dataset / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]
    out = tmp_path / "examples"
    assert script.main(["--data", str(tiny_dataset), "--names", *names, "--out", str(out)]) == 0
    monkeypatch.setattr(backend, "EXAMPLES_DIR", out)
    images = backend.example_images()
    assert len(images) == 2 and all(p.endswith(".jpg") for p in images)
    for path, name in zip(sorted(images), sorted(names)):
        info = json.loads(open(path[:-4] + ".json").read())
        assert info["classes"] == (tiny_dataset / "classes.txt").read_text().split()
        truth = read_example_truth(path)
        mask = read_mask(tiny_dataset / "SegmentationClass" / f"{name}.png")
        assert np.array_equal(truth.mask, mask) and list(truth.label_names) == info["labels"]
        assert (tiny_dataset / "JPEGImages" / f"{name}.jpg").read_bytes() == open(path, "rb").read()
    # a subset in VOC layout that core reads as the same dataset
    subset = tmp_path / "subset"
    assert script.main(["--data", str(tiny_dataset), "--count", "3", "--subset", str(subset)]) == 0
    from app.backend import BACKEND

    assert BACKEND.dataset_classes(subset) == BACKEND.dataset_classes(tiny_dataset)
    assert len((subset / "ImageSets" / "Segmentation" / "val.txt").read_text().split()) == 3
    assert script.main(["--data", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_converted_official_voc_checkpoint_is_listed_and_analysed(real_env, monkeypatch):
    """python -m core.convert official-afa on a state dict with the authors' key layout."""
    from app.checkpoints import CHECKPOINTS, describe_domain
    from app.inspect_view import on_image
    from app.state import Session
    from core.convert import main as convert
    from core.data import VOC_CLASSES
    from tests.test_convert import authors_state_dict

    src = real_env / "afa_voc.pth"
    torch.save({"module." + k: v for k, v in authors_state_dict().items()}, src)  # saved from DDP
    folder = real_env / "voc_ckpts"
    folder.mkdir()
    dst = folder / "afa_mit_b0_voc_official.safetensors"
    assert convert(["official-afa", str(src), str(dst), "--backbone", "mit_b0"]) == 0
    monkeypatch.setenv("AFA_APP_CHECKPOINT_DIRS", str(folder))
    CHECKPOINTS.refresh()
    info = next(i for i in CHECKPOINTS.all() if i.path.name == dst.name)
    assert (info.label, info.id) in CHECKPOINTS.choices("afa")
    assert list(info.classes) == list(VOC_CLASSES)
    domain = describe_domain(info)
    assert (
        "20 PASCAL VOC classes" in domain and "converted from the authors' checkpoint afa_voc.pth" in domain
    )
    image = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    views = on_image(image, info.id, None, False, 0.5, False, Session())
    assert "⚠️ internal" not in views["status"] and "PASCAL VOC" in views["status"]
    names = [label.replace(" (not in labels)", "") for label, _ in views["cam_class"]["choices"]]
    assert names == list(VOC_CLASSES[1:])
    assert views["labels"]["choices"][0] in (("aeroplane", "aeroplane"), "aeroplane")


def _entry(cls_f1, labels, ious):
    return {"cls_f1": cls_f1, "labels": labels,
            "stages": {"rw_afa_label": {"per_class": {"background": 0.99, **ious}}}}


def test_examples_where_keeps_only_images_the_model_handles(tiny_dataset, tmp_path, capsys):
    """--where: only images whose per-image result shows exact classes and every true class
    covered by the stage (IoU >= --min-iou) are drawn, listed or accepted by name."""
    import gzip

    script = _script()
    names = (tiny_dataset / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(names) >= 4
    good, wrong_classes, uncovered = names[0], names[1], names[2]
    per_image = {
        good: _entry(1.0, ["a", "b"], {"a": 0.8, "b": 0.95}),  # exactly at the bound: kept
        wrong_classes: _entry(0.5, ["a"], {"a": 0.99}),
        uncovered: _entry(1.0, ["a", "b"], {"a": 0.9, "b": 0.79}),
    }  # names[3:] are absent from the results: never qualify
    results = {"stages": {"rw_afa_label": {"miou": 0.5}}, "per_image": per_image}
    allowed = script.qualifying(results, "rw_afa_label", 0.8)
    assert allowed[good] is None
    assert "exactly" in allowed[wrong_classes]
    assert allowed[uncovered] == "rw_afa_label IoU below 0.8: b 0.79"
    # a class missing from per_class counts as IoU 0
    assert "c 0.00" in script.disqualification(_entry(1.0, ["c"], {}), "rw_afa_label", 0.8)

    path = tmp_path / "r.per_image.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(results, fh)
    base = ["--data", str(tiny_dataset), "--where", str(path)]
    assert script.main([*base, "--list"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == [good] and "1 of 3 images qualify" in err
    # drawing: only the qualifying image, however many are asked for and whatever the seed
    for seed in (0, 1, 2):
        out_dir = tmp_path / f"ex{seed}"
        assert script.main([*base, "--count", "3", "--seed", str(seed), "--out", str(out_dir)]) == 0
        written = list(out_dir.glob("*.json"))
        assert len(written) == 1 and written[0].name.startswith(good + "_")
    capsys.readouterr()
    assert script.main([*base, "--names", good, uncovered, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"ruled out by --where: {uncovered} (rw_afa_label IoU below 0.8: b 0.79)" in err
    assert script.main([*base, "--names", names[3], "--out", str(tmp_path / "x")]) == 2
    assert "not in the results" in capsys.readouterr().err
    assert script.main([*base, "--stage", "seg_label", "--list"]) == 2
    assert "no stage seg_label" in capsys.readouterr().err
    assert script.main(["--data", str(tiny_dataset), "--list"]) == 2
