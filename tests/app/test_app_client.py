"""The real app in a subprocess, driven through gradio_client (real core, real checkpoints)."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.app.helpers import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = sorted((ROOT / "assets" / "examples").glob("*.jpg"))[0]


def checkpoint_ids(folder: Path) -> tuple[str, str | None]:
    from app.backend import checkpoint_id
    from core.checkpoint import read_meta

    kinds: dict[str, str] = {}
    for path in sorted(folder.glob("*.safetensors")):
        kinds.setdefault(read_meta(path)["model"]["name"], checkpoint_id(path))
    return kinds["afa"], kinds.get("cnn_cam")


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    url, ckpt_dir, _, _ = app_server
    return Client(url, verbose=False), checkpoint_ids(ckpt_dir)


def outputs(client, api_name, values):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]
    names = [r["label"] or f"value_{i}" for i, r in enumerate(api["returns"])]
    return dict(zip(names, values))


def test_api_endpoints(client):
    c, _ = client
    names = set(c.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/analyse", "/click_pixel", "/set_labels", "/set_crf", "/par_step", "/train_start"} <= names


def test_analyse_example_then_click(client):
    from gradio_client import handle_file

    c, (afa, cnn) = client
    start = time.perf_counter()
    out = c.predict(handle_file(str(EXAMPLE)), afa, cnn or "", False, 0.5, False, api_name="/analyse")
    print(f"\nanalyse {EXAMPLE.name} through the API: {time.perf_counter() - start:.1f} s")
    views = outputs(c, "/analyse", out)
    status = next(v for v in out if isinstance(v, str) and " px " in v)
    assert "⚠️" not in status
    labels = ("Transformer CAM", "PAR label", "AFA-propagated label", "MHSA-propagated label", "Segmentation")
    for label in labels:
        assert Path(views[label]).is_file(), label

    from PIL import Image

    width, height = Image.open(EXAMPLE).size
    far = (width * 3 // 4, height * 2 // 3)
    clicks = {}
    for point in ((20, 20), far):
        start = time.perf_counter()
        res = c.predict(point[0], point[1], None, 0.5, False, api_name="/click_pixel")
        clicks[point] = (outputs(c, "/click_pixel", res), time.perf_counter() - start)
        print(f"click {point} round trip through the API: {clicks[point][1] * 1000:.0f} ms")
    (a, _), (b, _) = clicks.values()
    for label in ("Learned affinity (AFA)", "MHSA attention", "Heads"):
        assert Path(a[label]).read_bytes() != Path(b[label]).read_bytes(), label
    assert any(isinstance(v, str) and f"Pixel ({far[0]}, {far[1]})" in v for v in b.values())


def test_labels_override_and_par(client):
    from gradio_client import handle_file

    c, (afa, cnn) = client
    c.predict(handle_file(str(EXAMPLE)), afa, cnn or "", False, 0.5, False, api_name="/analyse")
    # two of the shipped checkpoint's classes (its class list travels with the example)
    first, second = json.loads(EXAMPLE.with_suffix(".json").read_text())["classes"][1:3]
    out = c.predict([first, second], None, 0.5, False, api_name="/set_labels")
    assert any(isinstance(v, str) and f"your labels: {first}, {second}" in v for v in out)
    par = outputs(c, "/par_step", c.predict(1, 5, api_name="/par_step"))
    assert any(isinstance(v, str) and "after 5 of" in v for v in par.values())


def test_crf_changes_the_segmentation_in_the_app(client, app_server):
    """The dense-CRF option on a shipped example: the segmentation shown changes (it used to fail
    with "buffer source array is read-only" and silently keep the plain one)."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    _, (afa, cnn) = client
    c = Client(app_server[0], verbose=False)  # a session of its own: the example is new to it
    plain = outputs(c, "/analyse", c.predict(handle_file(str(EXAMPLE)), afa, cnn or "", False, 0.5, False,
                                              api_name="/analyse"))
    refined = outputs(c, "/set_crf", c.predict(True, None, 0.5, False, api_name="/set_crf"))
    texts = [v for v in refined.values() if isinstance(v, str)]
    assert not any("⚠️" in v or "went wrong" in v for v in texts), texts
    before = np.asarray(Image.open(plain["Segmentation"]).convert("RGB"))
    after = np.asarray(Image.open(refined["Segmentation"]).convert("RGB"))
    assert before.shape == after.shape and not np.array_equal(before, after)
    back = outputs(c, "/set_crf", c.predict(False, None, 0.5, False, api_name="/set_crf"))
    assert np.array_equal(np.asarray(Image.open(back["Segmentation"]).convert("RGB")), before)


def test_bad_upload_is_a_message_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client import handle_file

    c, (afa, cnn) = client
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = c.predict(handle_file(str(bad)), afa, cnn or "", False, 0.5, False, api_name="/analyse")
    messages = [v for v in out if isinstance(v, str) and v.startswith("⚠️")]
    assert len(messages) == 1 and "Traceback" not in messages[0] and "\n" not in messages[0]
    out = c.predict(handle_file(str(EXAMPLE)), afa, cnn or "", False, 0.5, False, api_name="/analyse")
    assert not any(isinstance(v, str) and v.startswith("⚠️") for v in out)


def test_click_before_analysis_in_a_fresh_session(app_server):
    from gradio_client import Client

    fresh = Client(app_server[0], verbose=False)
    out = fresh.predict(5, 5, None, 0.5, False, api_name="/click_pixel")
    assert any(isinstance(v, str) and "Analyse an image first" in v for v in out)


def test_private_files_are_not_served(app_server):
    url = app_server[0]
    for path in (ROOT / "app.py", ROOT / "core" / "config.py", Path("/etc/hostname")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert err.value.code in (403, 404)
    example = urllib.request.urlopen(f"{url}gradio_api/file={EXAMPLE}", timeout=10)
    assert example.status == 200  # the app's own assets are
