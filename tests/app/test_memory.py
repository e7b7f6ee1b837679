"""The app's memory stays bounded: after 40 analyses of different 512 px images, the server's
resident memory has grown by at most the analysis cache's documented limit (``AFA_APP_CACHE_MB``,
1.5 GB by default) plus one analysis, counted from the first analysis (models loaded, warm)."""

from __future__ import annotations

import os
import time

import pytest

from tests.app.helpers import ROOT, core_ready, free_port, start_app, stop_app

pytestmark = pytest.mark.slow

IMAGES = 40
SIDE = 512


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_memory_is_bounded_by_the_cache_limit(tmp_path):
    reason = core_ready()
    if reason:
        pytest.skip(reason)
    from gradio_client import Client, handle_file
    from PIL import Image

    import core
    from app.cache import ANALYSES, nbytes_of
    from core.bench import smooth_image

    ckpt = ROOT / "checkpoints" / "afa_mit_b0_scenes.safetensors"
    if not ckpt.is_file():
        pytest.skip("needs the shipped AFA checkpoint")
    # one analysis of this size, measured as the cache measures it
    one = nbytes_of(core.analyze(core.load_model(ckpt, device="cpu"), smooth_image(SIDE, SIDE, 99)))
    limit = ANALYSES.max_bytes  # the documented default (no AFA_APP_CACHE_MB in the server's env)
    paths = []
    for seed in range(IMAGES + 1):
        paths.append(tmp_path / f"img{seed:02d}.png")
        Image.fromarray(smooth_image(SIDE, SIDE, seed)).save(paths[-1])

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFA_APP_CACHE")}
    env.update(GRADIO_ANALYTICS_ENABLED="False", AFA_APP_WARM="0", AFA_APP_RUNS_DIR=str(tmp_path / "runs"),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"), AFA_APP_CHECKPOINT_DIRS=str(ckpt.parent),
               AFA_APP_MAX_SIDE=str(SIDE), PYTHONUNBUFFERED="1")
    server, url = start_app([str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                            log_path=tmp_path / "server.log", port=port, timeout=180)
    try:
        client = Client(url, verbose=False)
        from app.backend import checkpoint_id

        afa = checkpoint_id(ckpt)

        def analyse(path):
            out = client.predict(handle_file(str(path)), afa, "", False, 0.5, False, api_name="/analyse")
            status = next(v for v in out if isinstance(v, str) and " px " in v)
            assert not status.startswith("⚠️") and f"{SIDE}×{SIDE} px" in status, status

        analyse(paths[-1])  # models loaded, first analysis cached: the baseline
        base = rss_bytes(server.pid)
        seen = []
        start = time.perf_counter()
        for path in paths[:IMAGES]:
            analyse(path)
            seen.append(rss_bytes(server.pid))
        took = time.perf_counter() - start
    finally:
        stop_app(server)
    mb = 1 / 2**20
    grown = max(seen) - base
    steps = ", ".join(f"{seen[i] * mb:.0f}" for i in (9, 19, 29, 39))
    print(f"\n{IMAGES} analyses of {SIDE} px images in {took:.0f} s; one analysis {one * mb:.0f} MB; "
          f"cache limit {limit * mb:.0f} MB; RSS at the first analysis {base * mb:.0f} MB, "
          f"after 10/20/30/40: {steps} MB; most grown {grown * mb:.0f} MB")
    assert grown <= limit + one
    # and it is bounded, not just large: the last ten analyses add (almost) nothing
    assert seen[-1] - seen[29] <= one
