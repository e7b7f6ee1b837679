"""The analysis tabs' handlers (inspect, affinity, heads, PAR steps), against fixture analyses
(no model)."""

import numpy as np

from app import render
from app.affinity_view import on_click, on_smooth
from app.analysis import cached
from app.cache import ANALYSES
from app.heads_view import on_block_change
from app.inspect_view import (
    CRF_MISSING,
    on_class_change,
    on_crf_toggle,
    on_image,
    on_labels_override,
    on_opacity,
)
from app.par_view import on_par_class, on_par_step
from app.state import Session
from tests.app.helpers import make_analysis


def _heads_grid_shape(image: np.ndarray, heads: int) -> tuple[int, int]:
    """The size of the heads view: one titled thumbnail per head, at most 4 in a row."""
    thumb = render.resize_long_side(image, render.THUMB_SIDE)
    return render.tile_grid([thumb] * heads, ["t"] * heads, min(heads, 4)).shape[:2]


def _image(views, name):
    value = views[name]
    assert isinstance(value, np.ndarray), f"{name} is {type(value).__name__}"
    assert value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] == 3
    return value


def test_on_image_renders_every_view(analysed, fake_backend):
    session, views = analysed
    assert session.ready and set(session.keys) == {"afa", "cnn"}
    # a 96x128 image is drawn 3x (long side 384 >= render.DISPLAY_SIDE), every map alike
    maps = ("cam_cnn", "cam_afa", "label_cam", "label_par", "label_mhsa", "label_afa", "seg", "aff_learned")
    for name in maps:
        assert _image(views, name).shape == (288, 384, 3), name
    for name in ("aff_click", "aff_learned", "aff_mhsa", "heads_grid", "par_image", "par_strip"):
        _image(views, name)
    assert "cat" in views["status"] and "car" in views["status"]
    assert "cat" in views["legend"] and "background" in views["legend"]
    assert views["labels"]["value"] == ["cat", "car"]
    assert views["cam_class"]["value"] == 1
    assert len(views["heads_block"]["choices"]) == 5
    assert views["par_step"]["maximum"] == 10
    assert views["scores"] is not None
    # the CNN gets the Transformer's labels so both CAMs cover the same classes
    assert fake_backend.analyze_calls[-1] == {"kind": "cnn_cam", "labels": ["cat", "car"], "crf": False}


def test_second_analysis_of_same_image_is_cached(analysed, fake_backend, ids):
    session, _ = analysed
    calls = len(fake_backend.analyze_calls)
    views = on_image(session.image.copy(), ids[0], ids[1], False, 0.5, False, Session())
    assert len(fake_backend.analyze_calls) == calls
    assert views["session"].keys == session.keys


def test_click_changes_affinity_without_a_model_call(analysed, fake_backend):
    session, _ = analysed
    calls = len(fake_backend.analyze_calls)
    a = on_click(session, (5, 5), None, 0.5, False)
    b = on_click(session, (120, 90), None, 0.5, False)
    assert len(fake_backend.analyze_calls) == calls, "a click must not run the model"
    assert a["session"].point == (5, 5) and b["session"].point == (120, 90)
    assert (b["click_x"], b["click_y"]) == (120, 90)
    for name in ("aff_learned", "aff_mhsa", "heads_grid", "aff_click"):
        assert not np.array_equal(_image(a, name), _image(b, name)), name
    assert "token (row 0, col 0)" in a["aff_note"]
    assert "token (row 5, col 7)" in b["aff_note"]


def test_click_at_512_shows_the_clicked_token_of_every_block(fake_backend, ids):
    """The size the app analyses at: a 32x32 affinity grid, 128x128 stage-1 queries."""
    image = np.random.default_rng(0).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    session = on_image(image, ids[0], None, False, 0.5, False, Session())["session"]
    afa = cached(session, "afa")
    assert afa.grid == (32, 32) and afa.attention[0].attn.shape == (1, 128 * 128, 16 * 16)
    for smooth in (False, True):
        for block in (0, 4):
            views = on_click(session, (300, 200), block, 0.5, smooth)
            assert "status" not in views, views.get("status")  # a failure would only say so there
            spec = afa.attention[block]
            row, col = render.token_at((300, 200), (512, 512), spec.grid)
            assert (
                f"query token (row {row}, col {col}) of {spec.grid[0]}×{spec.grid[1]}" in views["heads_note"]
            )
            assert _image(views, "heads_grid").shape[:2] == _heads_grid_shape(image, spec.attn.shape[0])


def test_click_out_of_bounds_is_clamped(analysed):
    session, _ = analysed
    views = on_click(session, (10_000, -5), 0, 0.5, True)
    assert views["session"].point == (127, 0)


def test_click_before_analysis_says_so():
    views = on_click(Session(), (3, 3), None, 0.5, False)
    assert views["status"].startswith("⚠️") and "Analyse an image first" in views["status"]


def test_click_recomputes_when_cache_dropped_the_analysis(analysed, fake_backend):
    session, _ = analysed
    ANALYSES.clear()
    views = on_click(session, (10, 10), None, 0.5, False)
    assert "aff_learned" in views
    assert fake_backend.analyze_calls[-1]["kind"] == "afa"


def test_class_change_and_absent_class_note(analysed):
    session, _ = analysed
    present = on_class_change(3, 0.5, session)
    absent = on_class_change(2, 0.5, session)
    assert set(present) == {"cam_cnn", "cam_afa", "cam_note"}
    assert "not among the image-level labels" in absent["cam_note"]
    assert not np.array_equal(present["cam_afa"], absent["cam_afa"])


def test_labels_override_reanalyses_with_given_labels(analysed, fake_backend):
    session, _ = analysed
    views = on_labels_override(["tree", "dog"], None, 0.5, False, session)
    assert views["session"].labels == ("dog", "tree")  # the model's order
    assert fake_backend.analyze_calls[-2]["labels"] == ["dog", "tree"]
    assert views["labels"]["value"] == ["dog", "tree"]
    assert "your labels" in views["status"]
    back = on_labels_override(None, None, 0.5, False, views["session"])
    assert back["session"].labels is None and back["labels"]["value"] == ["cat", "car"]


def test_apply_with_nothing_ticked_says_one_thing_and_keeps_the_analysis(analysed, fake_backend):
    session, _ = analysed
    calls = len(fake_backend.analyze_calls)
    views = on_labels_override([], None, 0.5, False, session)
    assert set(views) == {"status"} and len(fake_backend.analyze_calls) == calls  # nothing re-analysed
    status = views["status"]
    assert status.startswith("⚠️ No label is ticked") and "\n" not in status
    assert "predicted labels:" not in status and "every CAM is zero" not in status


def test_labels_override_rejects_unknown_names(analysed):
    session, _ = analysed
    views = on_labels_override(["unicorn"], None, 0.5, False, session)
    assert "Unknown class" in views["status"]


def test_crf_toggle(analysed, fake_backend):
    session, views = analysed
    on = on_crf_toggle(True, None, 0.5, False, session)
    assert on["session"].crf and "dense CRF" in on["seg_note"]
    # the CRF works from the cached analysis: no second model run
    assert fake_backend.analyze_calls[-1] == {"kind": "add_crf", "labels": None, "crf": True}
    assert not np.array_equal(on["seg"], views["seg"])
    off = on_crf_toggle(False, None, 0.5, False, on["session"])
    assert np.array_equal(off["seg"], views["seg"])


def test_crf_missing_falls_back_with_a_message(analysed, fake_backend):
    session, views = analysed
    fake_backend.crf_installed = False
    out = on_crf_toggle(True, None, 0.5, False, session)
    assert out["crf"] is False and not out["session"].crf
    assert CRF_MISSING in out["status"] and "pydensecrf" in out["status"]
    assert np.array_equal(out["seg"], views["seg"])


def test_a_crf_failure_is_not_taken_for_a_missing_crf(analysed, fake_backend, caplog):
    session, _ = analysed
    fake_backend.crf_error = RuntimeError("the CRF crashed")
    out = on_crf_toggle(True, None, 0.5, False, session)
    assert out == {"status": "⚠️ internal error (logged)"}
    assert "the CRF crashed" in caplog.text and "Traceback" in caplog.text


def test_par_steps(analysed):
    session, _ = analysed
    first = on_par_step(1, 0, session)
    last = on_par_step(1, 10, session)
    assert set(first) == {"par_image", "par_note"}
    assert "before PAR" in first["par_note"] and "after 10 of 10" in last["par_note"]
    assert not np.array_equal(first["par_image"], last["par_image"])
    other = on_par_class(0, 99, session)  # background channel, step clamped
    assert other["par_step"]["value"] == 10


def test_every_block_renders_all_heads(analysed):
    session, _ = analysed
    afa = cached(session, "afa")
    for block, spec in enumerate(afa.attention):
        out = on_block_change(block, False, session)
        assert f"block {spec.index + 1}" in out["heads_note"]
        assert _image(out, "heads_grid").shape[:2] == _heads_grid_shape(afa.image, spec.attn.shape[0]), block


def test_opacity_rerenders(analysed):
    session, _ = analysed
    faint = on_opacity(0.1, None, False, session)
    strong = on_opacity(0.9, None, False, session)
    assert not np.array_equal(faint["label_par"], strong["label_par"])
    assert not np.array_equal(faint["aff_learned"], strong["aff_learned"])
    assert "scores" not in faint  # unchanged views are skipped


def test_smooth_changes_the_token_maps(analysed):
    session, _ = analysed
    sharp, smooth = on_smooth(False, None, 0.5, session), on_smooth(True, None, 0.5, session)
    assert not np.array_equal(sharp["aff_learned"], smooth["aff_learned"])
    assert "heads_block" not in smooth  # the block picker keeps its value


def test_model_without_attention_shows_placeholders(fake_backend, ids):
    fake_backend.attention = False
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    views = on_image(image, ids[0], None, False, 0.5, False, Session())
    assert "no attention" in views["aff_note"]
    assert _image(views, "label_afa").shape == (384, 384, 3)  # 64 px drawn 6x
    assert views["heads_block"]["choices"] == []
    click = on_click(views["session"], (3, 3), None, 0.5, False)
    assert "aff_learned" in click


def test_no_cnn_checkpoint(fake_backend, ids):
    views = on_image(np.zeros((64, 64, 3), dtype=np.uint8), ids[0], "", False, 0.5, False, Session())
    assert "no CNN checkpoint" in views["status"]
    assert set(views["session"].keys) == {"afa"}


def test_unknown_checkpoint_id_is_refused(fake_backend):
    views = on_image(np.zeros((32, 32, 3), dtype=np.uint8), "/etc/passwd", None, False, 0.5, False, Session())
    assert "not available" in views["status"]


def test_no_image_clears(fake_backend, ids):
    views = on_image(None, ids[0], ids[1], False, 0.5, False, Session())
    assert views["cam_afa"] is None and "Upload an image" in views["status"]


def test_token_mapping_covers_the_grid():
    assert render.token_at((0, 0), (96, 128), (6, 8)) == (0, 0)
    assert render.token_at((127, 95), (96, 128), (6, 8)) == (5, 7)
    assert render.token_at((16, 16), (96, 128), (6, 8)) == (1, 1)
    assert render.token_box((1, 1), (96, 128), (6, 8)) == (16, 16, 32, 32)


def test_fixture_matches_core_contract():
    a = make_analysis()
    assert a.cam.shape == (4, 96, 128) and a.affinity.shape == (48, 48)
    assert a.par_steps.shape[1] == len(a.par_channels)
