"""Ground truth in Inspect (examples and given masks), per-stage scores, the errors toggle, true
versus predicted labels, the honest status line, Compare and Export, against fixture analyses."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from app import render
from app.analysis import cached, new_session
from app.backend import example_images
from app.compare_view import on_compare
from app.inspect_view import (
    analyse_and_draw,
    on_errors,
    on_export,
    on_image,
    on_labels_override,
    on_true_labels,
)
from app.state import Session, ViewSettings
from app.truth import EXAMPLES, GroundTruth, read_example_truth, score_line, stage_scores
from core.method.metrics import ConfusionMatrix, error_map
from tests.app.helpers import CLASSES


def _truth(shape=(96, 128)) -> GroundTruth:
    """cat on the left half, dog on the bottom right, an ignored border column."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[:, : shape[1] // 2] = 1
    mask[shape[0] // 2 :, 3 * shape[1] // 4 :] = 2
    mask[:, -1] = 255
    return GroundTruth(mask, tuple(CLASSES), "test mask", "img_001")


@pytest.fixture
def with_truth(fake_backend, ids):
    """A session analysed with ground truth (as an image opened from the Dataset tab)."""
    image = np.random.default_rng(5).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    session = new_session(image, ids[0], ids[1], False, truth=_truth())
    views = analyse_and_draw(session, ViewSettings(opacity=0.5), lambda *a, **k: None)
    return views["session"], views


def test_examples_ship_their_ground_truth():
    images = example_images()
    assert images and not any(p.endswith(".png") for p in images)  # the masks are not examples
    for path in images:
        truth = read_example_truth(path)
        assert truth is not None and truth.classes[0] == "background"
        info = json.loads(open(path.rsplit(".", 1)[0] + ".json").read())
        assert list(truth.label_names) == info["labels"]  # the labels are the mask's classes
        assert truth.mask.shape == np.asarray(Image.open(path)).shape[:2]


def test_an_example_is_recognised_by_its_pixels(fake_backend, ids):
    """Gradio hands a copy of an example to the handler: its ground truth is found by content."""
    path = example_images()[0]
    copy = np.asarray(Image.open(path).convert("RGB")).copy()
    views = on_image(copy, ids[0], ids[1], False, 0.5, False, Session())
    truth = views["session"].truth
    assert truth is not None and truth.name == read_example_truth(path).name
    # the examples' classes are not the fake model's: shown, not scored, and said so
    assert "does not know" in views["truth_note"] and views["score_cam"] == ""
    assert EXAMPLES.find("not an image digest", 512) is None


def test_an_image_opened_with_its_truth_stays_so_when_it_is_also_an_example(fake_backend, ids):
    """The Dataset tab opens an image with its ground truth, named after its row; the image comes
    back through on_image. When the same pixels are a shipped example, the session stays the
    Dataset tab's (nothing to redo), not re-analysed and renamed as the example."""
    path = example_images()[0]
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    example = read_example_truth(path)
    opened = GroundTruth(example.mask, example.classes, "dataset · val_x", "val_x")
    session = new_session(rgb, ids[0], ids[1], False, truth=opened, dense=True)
    views = analyse_and_draw(session, ViewSettings(opacity=0.5), lambda *a, **k: None)
    assert views["session"].truth.name == "val_x"
    assert on_image(rgb.copy(), ids[0], ids[1], False, 0.5, False, views["session"]) == {}
    # another checkpoint is a new analysis of that image, which is then the example
    again = on_image(rgb.copy(), ids[0], None, False, 0.5, False, views["session"])
    assert again["session"].truth.name == example.name


def test_scores_under_each_map_are_the_confusion_matrix_of_core(with_truth):
    session, views = with_truth
    afa = cached(session, "afa")
    truth = session.truth
    scores = stage_scores(afa, truth)
    assert set(scores) == {"cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label"}
    by_hand = ConfusionMatrix(len(CLASSES)).update(afa.rw_afa_label, truth.mask)
    assert np.array_equal(scores["rw_afa_label"].matrix, by_hand.matrix)
    assert views["score_afa"] == score_line(by_hand, CLASSES)
    assert views["score_afa"].startswith(f"**mIoU {100 * by_hand.miou():.1f}**")
    assert "cat" in views["score_afa"] and "tree" not in views["score_afa"]  # tree: in neither map
    assert "mIoU" in views["seg_note"] and "Segmentation branch" in views["seg_note"]
    assert "Ground truth (test mask): cat, dog." == views["truth_note"]
    assert views["truth_map"].shape == views["label_afa"].shape == (288, 384, 3)


def test_crf_scores_beside_the_plain_segmentation(with_truth):
    from app.inspect_view import on_crf_toggle

    session, views = with_truth
    on = on_crf_toggle(True, None, 0.5, False, session)
    crf = cached(on["session"], "afa")
    scores = stage_scores(crf, session.truth)
    assert "seg_crf_label" in scores
    assert on["seg_note"].startswith(score_line(scores["seg_crf_label"], CLASSES))
    assert f"(without the CRF: mIoU {100 * scores['seg_label'].miou():.1f})" in on["seg_note"]


def test_labels_default_to_the_true_ones_with_a_switch_to_predicted(with_truth, fake_backend):
    session, views = with_truth
    assert session.label_mode == "true"
    assert fake_backend.analyze_calls[0]["labels"] == ["cat", "dog"]
    assert "true labels: cat, dog" in views["status"] and views["true_btn"]["interactive"]
    predicted = on_labels_override(None, None, 0.5, False, session)
    assert predicted["session"].label_mode == "predicted" and fake_backend.analyze_calls[-2]["labels"] is None
    assert "predicted labels" in predicted["status"]
    back = on_true_labels(None, 0.5, False, predicted["session"])
    assert back["session"].label_mode == "true" and "true labels" in back["status"]
    assert back["score_afa"] == views["score_afa"]  # the cached true-label analysis


def test_errors_toggle_paints_false_positives_and_negatives(with_truth, fake_backend):
    session, views = with_truth
    calls = len(fake_backend.analyze_calls)
    on = on_errors(True, None, 0.5, False, session)
    assert len(fake_backend.analyze_calls) == calls, "the toggle must not run the model"
    assert on["session"].show_errors and "false positive" in on["legend"]
    afa = cached(session, "afa")
    errors = error_map(afa.par_label, session.truth.mask)
    expected = render.overlay_errors(render.for_display(afa.image), errors, 0.5)
    assert np.array_equal(on["label_par"], expected)
    # a false positive pixel is painted red-ish, a correct one grey
    k = render.display_scale(afa.image.shape)
    fp = np.argwhere(errors == 1)[0] * k
    assert tuple(on["label_par"][fp[0], fp[1]]) != tuple(views["label_par"][fp[0], fp[1]])
    off = on_errors(False, None, 0.5, False, on["session"])
    assert np.array_equal(off["label_par"], views["label_par"])
    bare = on_errors(True, None, 0.5, False, session.evolve(truth=None))
    assert "no ground truth" in bare["status"]


def test_status_says_what_the_checkpoint_knows_and_when_no_class_scores_high(fake_backend, ids, monkeypatch):
    from tests.app.helpers import make_analysis

    def unsure(model, image, labels, crf, dense=True):
        analysis = make_analysis(image, labels=labels)
        analysis.scores[:] = 0.2
        analysis.scores[2] = 0.31
        return analysis

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    sure = on_image(image, ids[0], None, False, 0.5, False, Session())["status"]
    assert "knows cat, dog, car, tree" in sure and "No class scores" not in sure
    from app import backend

    monkeypatch.setattr(backend.BACKEND, "analyze", unsure)
    status = on_image(image + 1, ids[0], None, False, 0.5, False, Session())["status"]
    assert "No class scores above 0.5 on this image (best: car 0.31)" in status


def test_compare_two_checkpoints_stage_by_stage(with_truth, ids):
    session, _ = with_truth
    views = on_compare(ids[0], ids[1], 0.5, session)
    assert views["session"].compare == (ids[0], ids[1])
    note = views["cmp_note"]
    assert "| stage | A mIoU | B mIoU | B − A |" in note and "| CAM |" in note
    a, b = cached(views["session"], "cmp_a"), cached(views["session"], "cmp_b")
    ma, mb = (stage_scores(x, session.truth)["cam_label"].miou() for x in (a, b))
    assert f"| CAM | {100 * ma:.1f} | {100 * mb:.1f} | {100 * (mb - ma):+.1f} |" in note
    for side in ("a", "b"):
        assert views[f"cmp_{side}_cam"].shape == (288, 384, 3) and "mIoU" in views[f"cmp_{side}_cam_note"]
    assert views["cmp_b_afa"].shape == (288, 384, 3)  # the CNN gives no AFA label: a placeholder of that size
    assert "no AFA-propagated label" not in views["cmp_a_afa_note"]
    assert "Analyse an image" in on_compare(ids[0], ids[1], 0.5, Session())["cmp_note"]


def test_export_zip_holds_the_documented_files(with_truth):
    session, _ = with_truth
    out = on_export(0.5, session)["export_file"]
    assert out["visible"]
    path = out["value"]
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        record = json.loads(zf.read("analysis.json"))
        arrays = np.load(io.BytesIO(zf.read("arrays.npz")))
        cam_png = np.asarray(Image.open(io.BytesIO(zf.read("labels/cam_label.png"))))
        truth_png = Image.open(io.BytesIO(zf.read("ground_truth.png")))
    stages = ("cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label")
    expected = {"analysis.json", "arrays.npz", "image.png", "ground_truth.png", "overlays/ground_truth.png"}
    expected |= {f"{d}/{s}.png" for d in ("labels", "overlays", "errors") for s in stages}
    expected |= {"cam/cat.png", "cam/dog.png", "overlays/cam_cat.png", "cnn/cam_cat.png"}
    assert expected <= names and set(record["files"]) == names
    afa = cached(session, "afa")
    assert np.array_equal(cam_png, afa.cam_label) and truth_png.mode == "P"
    assert np.array_equal(arrays["ground_truth"], session.truth.mask)
    assert (
        np.array_equal(arrays["affinity"], afa.affinity) and "attention_0" in arrays and "cnn_cam" in arrays
    )
    scores = stage_scores(afa, session.truth)
    assert record["scores"]["rw_afa_label"]["miou"] == pytest.approx(scores["rw_afa_label"].miou())
    assert record["labels"] == {
        "used": ["cat", "dog"],
        "source": "true",
        "true": ["cat", "dog"],
        "predicted": ["cat", "dog"],
    }
    assert record["checkpoint"]["id"] == session.afa_id and record["checkpoint"]["classes"] == CLASSES
    assert record["settings"]["pseudo_labels"].startswith("dense") and "max_side" in record["settings"]
    assert record["timings"]["total"] > 0 and record["image"]["name"] == "img_001"
    assert on_export(0.5, Session())["status"].startswith("⚠️")


def test_display_size_and_clicks_map_back():
    assert render.display_scale((192, 192)) == 2 and render.display_scale((500, 375)) == 1
    assert render.display_scale((64, 48)) == 6
    for point in ((0, 0), (17, 5), (191, 191)):
        shown = render.to_display(point, 3)
        assert render.from_display(shown, 3) == point
        assert render.from_display((shown[0] + 1, shown[1] - 1), 3) == point  # anywhere in its block
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    big = render.overlay_labels(render.enlarge(np.zeros((2, 2, 3), np.uint8), 3), labels, 1.0)
    assert big.shape == (6, 6, 3) and len({tuple(c) for c in big[:3, :3].reshape(-1, 3)}) == 1  # crisp
