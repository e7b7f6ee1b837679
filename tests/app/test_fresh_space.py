"""A fresh Space (a clean clone, no data/, no runs/, SPACE_ID set) trains from the UI through
gradio_client: Start generates the scenes data, the run trains to the end, and its checkpoint
opens in Inspect."""

import time
from pathlib import Path

import pytest

from tests.app.fresh_space import fresh_space, wait_for_run
from tests.app.helpers import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = sorted((ROOT / "assets" / "examples").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    with fresh_space(tmp_path_factory.mktemp("fresh_space"), public_scenes="8,4", public_iters=3) as running:
        yield running


def named(client, api_name, values):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]
    return {r["label"] or f"value_{i}": v for i, (r, v) in enumerate(zip(api["returns"], values))}


def test_a_fresh_space_trains_from_the_ui_and_opens_the_run_in_inspect(space):
    from gradio_client import Client, handle_file

    from core.checkpoint import read_meta
    from core.data.scenes import read_meta as read_scenes_meta

    url, clone = space
    client = Client(url, verbose=False)
    start = time.perf_counter()
    # the Train form, as a visitor fills it: name, dataset, data folder, encoder, mode, iterations
    # (the cap: 3 here), batch, crop, loss weights, PAR / affinity / L_reg, seed, evaluate every
    out = client.predict(
        "first", "scenes", "", "mit_b0", "afa", 3, 2, 64, 0.1, 0.1, 0.01, True, True, True, 0, 50,
        api_name="/train_start",
    )  # fmt: skip
    status = next(v for v in out if isinstance(v, str) and ("Started run" in v or "⚠️" in v))
    print(f"\nStart on a fresh Space (data generated, trainer spawned): {time.perf_counter() - start:.1f} s")
    print(status)
    assert status.startswith("Started run 'first'")
    assert "generated 12 scenes images into data/scenes-demo" in status
    demo = [p for p in (clone / "data").iterdir() if not p.name.startswith(".")]
    assert len(demo) == 1 and demo[0].name in ("scenes-demo", "scenes-demo-procedural")
    meta = read_scenes_meta(demo[0])
    assert (meta["train"], meta["val"], meta["canonical"]) == (8, 4, True)
    if meta["source"] == "procedural":  # no Fashion-MNIST on this machine: said in one line
        assert "\n\nFashion-MNIST is not installed" in status
    else:
        assert "Fashion-MNIST" not in status

    start = time.perf_counter()
    assert wait_for_run(clone, "first") == "finished"
    print(f"3 iterations + evaluation on the fresh Space: {time.perf_counter() - start:.1f} s")
    checkpoint = clone / "runs" / "first" / "checkpoint.safetensors"
    recorded = read_meta(checkpoint)
    assert recorded["step"] == 3 and recorded["data"]["source"] == meta["source"]
    assert recorded["data"]["root"] == f"data/{demo[0].name}"
    assert recorded["data"]["scenes"]["benchmark"] is False  # a demo set is never taken for the benchmark

    opened = named(client, "/open_run", client.predict("first", api_name="/open_run"))
    assert any(isinstance(v, str) and v.startswith("Opened first") for v in opened.values()), opened
    run_id = "runs/first/checkpoint.safetensors"
    assert any(isinstance(v, dict) and v.get("value") == run_id for v in opened.values()) or any(
        v == run_id for v in opened.values()
    ), opened
    start = time.perf_counter()
    views = client.predict(handle_file(str(EXAMPLE)), run_id, "", False, 0.5, False, api_name="/analyse")
    print(f"analysis with the new run's checkpoint: {time.perf_counter() - start:.1f} s")
    status = next(v for v in views if isinstance(v, str) and (" px " in v or "⚠️" in v))
    assert "⚠️" not in status, status
    files = [Path(v) for v in views if isinstance(v, str) and v.endswith((".png", ".webp", ".jpg"))]
    assert files and all(f.is_file() for f in files)
