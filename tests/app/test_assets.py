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
