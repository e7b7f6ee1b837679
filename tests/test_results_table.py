"""scripts/results_table.py: the error table on a case counted by hand."""

import json

import numpy as np
import pytest

from tests.scripts import load_script


def test_error_table_sums_the_images_then_splits_by_kind(tmp_path, capsys):
    # classes background, a, b. Image 1: 6 background pixels (2 labelled a), 4 of a (1 as
    # background, 1 as b). Image 2: 10 background (all right), 10 of b (3 as background), and 5
    # pixels of a left without a class. Items: 4 + 10 + 5 = 19 pixels, of which missed 1 + 3 = 4,
    # wrong class 1; background 16, false positive 2; no class 5 of 35.
    one = {"confusion": [[4, 2, 0], [1, 2, 1], [0, 0, 0]], "unpredicted": [0, 0, 0]}
    two = {"confusion": [[10, 0, 0], [0, 0, 0], [3, 0, 7]], "unpredicted": [0, 5, 0]}
    data = {"stages": {"seg_label": {"miou": 0.5}}, "n_images": 2,
            "per_image": {"i1": {"stages": {"seg_label": one}}, "i2": {"stages": {"seg_label": two}}}}
    path = tmp_path / "e.json"
    path.write_text(json.dumps(data))
    assert load_script("results_table").main(["--errors", f"M={path}"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| M | seg_label")]
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    expected = [100 * 2 / 16, 100 * 4 / 19, 100 * 1 / 19, 100 * 5 / 35]  # FP, FN, wrong class, unlabelled
    assert cells[2:] == [f"{v:.1f}" for v in expected]


def test_confusion_table_sums_the_images_and_names_the_classes_in_matrix_order(tmp_path, capsys):
    # the same two images as above, classes named in the file in matrix order (not sorted)
    one = {"confusion": [[4, 2, 0], [1, 2, 1], [0, 0, 0]], "unpredicted": [0, 0, 0]}
    two = {"confusion": [[10, 0, 0], [0, 0, 0], [3, 0, 7]], "unpredicted": [0, 5, 0]}
    data = {"stages": {"seg_label": {"miou": 0.5}}, "n_images": 2,
            "classes": ["background", "zebra", "apple"],
            "per_image": {"i1": {"stages": {"seg_label": one}}, "i2": {"stages": {"seg_label": two}}}}
    path = tmp_path / "e.json"
    path.write_text(json.dumps(data))
    assert load_script("results_table").main(["--confusion", "seg_label", f"M={path}"]) == 0
    rows = {cells[0]: cells[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert rows["true \\ predicted"] == ["background", "zebra", "apple", "none", "area"]
    # summed: background 14 / 2 / 0 (16 px), zebra 1 / 2 / 1 + 5 without a class (9 px), apple 3 / 0 / 7
    # predicted areas: background 18 of 16, zebra 4 of 9, apple 8 of 10
    def pct(*v):
        return [f"{100 * x:.1f}" for x in v]

    assert rows["background"] == pct(14 / 16, 2 / 16, 0, 0) + ["1.12"]
    assert rows["zebra"] == pct(1 / 9, 2 / 9, 1 / 9, 5 / 9) + ["0.44"]
    assert rows["apple"] == pct(3 / 10, 0, 7 / 10, 0) + ["0.80"]


@pytest.mark.parametrize("content", [None, b"not json", b"\x1f\x8b broken gzip"],
                         ids=["missing", "text", "gzip"])
def test_unreadable_results_are_one_line_with_exit_2(tmp_path, content):
    """A results file that is missing, not JSON or a broken .gz: one line naming it, exit code 2,
    no traceback (``core.evaluate.read_results``, which make_examples --where reads with too)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / ("r.json.gz" if content and content.startswith(b"\x1f") else "r.json")
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "results_table.py"), f"M={path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(path) in proc.stderr and "Traceback" not in proc.stderr


def test_steps_pair_the_models_image_by_image(tmp_path, capsys):
    # two classes; model B is model A with image i2 mended (2 missed item pixels now found).
    # Summed A: [[9, 1], [3, 7]] -> IoU 9/13 and 7/11; summed B: [[9, 1], [1, 9]] -> 9/11 and 9/11.
    def result(i2, order):
        images = {"i1": {"stages": {"seg_label": {"confusion": [[5, 1], [1, 3]], "unpredicted": [0, 0]}}},
                  "i2": {"stages": {"seg_label": {"confusion": i2, "unpredicted": [0, 0]}}}}
        counts = np.add([[5, 1], [1, 3]], i2)
        miou = float(np.mean(np.diag(counts) / (counts.sum(0) + counts.sum(1) - np.diag(counts))))
        return {"stages": {"seg_label": {"miou": miou}}, "n_images": 2,
                "per_image": {k: images[k] for k in order}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result([[4, 0], [2, 4]], ["i1", "i2"])))
    b.write_text(json.dumps(result([[4, 0], [0, 6]], ["i2", "i1"])))  # another order: paired by name
    script = load_script("results_table")
    assert script.main(["--bootstrap", "200", "--steps", "seg_label", f"A={a}", f"B={b}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("- B - A: "))
    step = 100 * (9 / 11 - (9 / 13 + 7 / 11) / 2)
    value, interval = line.removeprefix("- B - A: ").split(" ", 1)
    assert value == f"{step:+.1f}"
    low, high = (float(v) for v in interval.strip("[]").split(","))
    assert 0 <= low <= step <= high  # B is never worse on any image: no replicate favours A
    # files of other images cannot be paired: one line, exit code 2
    other = tmp_path / "c.json"
    other.write_text(json.dumps({**result([[4, 0], [0, 6]], ["i1"]), "n_images": 1}))
    from core.errors import run_cli

    assert run_cli(lambda: script.main(["--steps", "seg_label", f"A={a}", f"C={other}"]), "t") == 2
    assert "other images" in capsys.readouterr().err
