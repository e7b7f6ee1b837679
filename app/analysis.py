"""Analysis orchestration: where the app runs a model on one image (``app.evaluations`` runs
one over a dataset).

An image is read once (``new_session``, with its ground truth when it has one), analysed by the
Transformer and the CNN checkpoints (``analyse_session``) or by the Compare tab's two
(``analyse_pair``), and the results go into the shared cache; every view then reads them with
``cached`` (a click or a slider never runs the model).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.backend import BACKEND
from app.cache import ANALYSES, analysis_key, image_digest, release_free_memory
from app.checkpoints import CHECKPOINTS
from app.state import Session
from app.truth import EXAMPLES, true_labels
from core.errors import UserError

log = logging.getLogger("afa_app")

# Long side images are analysed at (set by app.ui.build_app: 512 locally, 384 in public mode, where
# a CPU Space analyses a 512 px image in 15-30 s; AFA_APP_MAX_SIDE overrides both).
MAX_SIDE = int(os.environ.get("AFA_APP_MAX_SIDE", "512"))


def read_source(source: Any, max_side: int | None = None) -> tuple[Any, list[str]]:
    """An image (a path, an array...) read by core.io at ``max_side`` (default ``MAX_SIDE``)."""
    try:
        return BACKEND.read_image(source, MAX_SIDE if max_side is None else max_side)
    except UserError as exc:
        if isinstance(source, str) and source in str(exc):  # never show the server's upload folder
            raise UserError(str(exc).replace(source, os.path.basename(source))) from exc
        raise


def new_session(
    source: Any,
    afa_id: str,
    cnn_id: str | None,
    crf: bool,
    truth: Any = None,
    max_side: int | None = None,
    **settings,
) -> Session:
    """A session for a new image, read by core.io at ``MAX_SIDE``. Its ground truth is ``truth``
    or, for a shipped example, the one beside it; with ground truth the image-level labels are
    the true ones. ``settings``: other Session fields to keep (e.g. ``dense``)."""
    image, notes = read_source(source, max_side)
    image_hash = image_digest(image)
    if truth is None:
        truth = EXAMPLES.find(image_hash, MAX_SIDE)
    if truth is not None and truth.mask.shape != image.shape[:2]:
        notes = [*notes, f"ground truth resized from {truth.mask.shape[1]}×{truth.mask.shape[0]}"]
        truth = truth.resized(image.shape)
    return Session(
        image=image,
        image_hash=image_hash,
        image_notes=list(notes),
        afa_id=afa_id,
        cnn_id=cnn_id or None,
        crf=bool(crf),
        truth=truth,
        label_mode="true" if truth is not None else "predicted",
        point=(image.shape[1] // 2, image.shape[0] // 2),
        **settings,
    )


def checkpoint_for(session: Session, which: str) -> str | None:
    """The checkpoint id behind an analysis slot: "afa", "cnn", or the Compare tab's "cmp_a" / "cmp_b"."""
    if which in ("cmp_a", "cmp_b"):
        return session.compare[0 if which == "cmp_a" else 1] if session.compare else None
    return session.afa_id if which == "afa" else session.cnn_id


def labels_for(session: Session, classes) -> tuple[str, ...] | None:
    """The image-level labels a checkpoint with ``classes`` is asked for (None = its predictions):
    the true ones it knows (label mode "true"), or the user's that it knows ("custom")."""
    if session.label_mode == "true" and session.truth is not None:
        return true_labels(session.truth, classes) or None
    if session.label_mode == "custom" and session.labels is not None:
        return tuple(n for n in session.labels if n in classes) if classes else session.labels
    return None


def analyse(session: Session, which: str, labels: tuple[str, ...] | None) -> tuple[Any, tuple | None]:
    """``(analysis, cache key)`` of ``session.image`` by the checkpoint of slot ``which``."""
    info = CHECKPOINTS.resolve(checkpoint_for(session, which))
    if info is None or session.image is None:
        return None, None
    crf = session.crf and which != "cnn"
    key = analysis_key(session.image_hash, info.path, labels, crf, session.dense)

    def compute():
        plain_key = analysis_key(session.image_hash, info.path, labels, False, session.dense)
        plain = ANALYSES.get(plain_key) if crf else None
        if plain is not None:  # the CRF works from the cached probabilities: no model call
            return BACKEND.add_crf(plain)
        model = BACKEND.load_model(info.path)
        # one line per model run (the browser test counts them: one upload, one run per checkpoint)
        log.info("model run: %s on image %s", Path(info.path).name, session.image_hash[:12])
        return BACKEND.analyze(
            model, session.image, list(labels) if labels is not None else None, crf, session.dense
        )

    analysis, was_cached = ANALYSES.get_or_compute(key, compute)
    if not was_cached:
        release_free_memory()  # the analysis's working memory, and any analysis the cache evicted
    return analysis, key


def cnn_labels(session: Session, afa: Any) -> tuple[str, ...] | None:
    """The CNN is asked for the same image-level labels as the Transformer, so both CAMs cover
    the same classes (its own predictions still show in the score chart); names it does not
    know are left out."""
    known = CHECKPOINTS.resolve(session.cnn_id).classes
    labels = labels_for(session, known)
    if labels is None and afa is not None:
        labels = tuple(afa.classes[int(c)] for c in afa.present)
        labels = tuple(n for n in labels if n in known) if known else labels
    return labels


def analyse_session(session: Session, progress: Callable | None = None) -> Session:
    """Run (or fetch) both analyses; returns the session with the cache keys filled in (a
    comparison made for another image or other settings is dropped)."""
    progress = progress or (lambda *a, **k: None)
    keys: dict[str, tuple] = {}
    progress(0.2, desc="Transformer (AFA) analysis")
    info = CHECKPOINTS.resolve(session.afa_id)
    afa, afa_key = analyse(session, "afa", labels_for(session, info.classes if info else ()))
    if afa_key is not None:
        keys["afa"] = afa_key
    if session.cnn_id:
        progress(0.6, desc="CNN CAM analysis")
        _, cnn_key = analyse(session, "cnn", cnn_labels(session, afa))
        if cnn_key is not None:
            keys["cnn"] = cnn_key
    progress(0.9, desc="rendering")
    return session.evolve(keys=keys, compare=None)


def analyse_pair(session: Session, first: str, second: str, progress: Callable | None = None) -> Session:
    """Analyse the session's image with two checkpoints (the Compare tab), each asked for the
    labels it knows; returns the session with keys "cmp_a" / "cmp_b"."""
    progress = progress or (lambda *a, **k: None)
    session = session.evolve(compare=(first, second))
    keys = {k: v for k, v in session.keys.items() if k not in ("cmp_a", "cmp_b")}
    for n, which in enumerate(("cmp_a", "cmp_b")):
        progress(0.1 + 0.4 * n, desc=f"checkpoint {'AB'[n]}")
        info = CHECKPOINTS.resolve(checkpoint_for(session, which))
        _, key = analyse(session, which, labels_for(session, info.classes if info else ()))
        if key is not None:
            keys[which] = key
    return session.evolve(keys=keys)


def cached(session: Session, which: str) -> Any:
    """The analysis behind ``session.keys[which]``; recomputed only if the shared cache dropped it."""
    key = session.keys.get(which)
    if key is None:
        return None
    analysis = ANALYSES.get(key)
    if analysis is None:
        labels = key[2]  # as analysis_key holds them
        analysis, _ = analyse(session, which, labels)
    return analysis


def warm_cache(example: str | None, afa_id: str | None, cnn_id: str | None) -> None:
    """Analyse ``example`` in the background so the first visitor gets it at once."""
    if not example or not afa_id or not BACKEND.core_available():
        return

    def work():
        try:
            analyse_session(new_session(example, afa_id, cnn_id, crf=False))
            log.info("warm-up analysis of %s done", Path(example).name)
        except Exception:  # noqa: BLE001 - a warm-up failure only costs the first visitor time
            log.exception("warm-up analysis failed")

    threading.Thread(target=work, name="afa-warmup", daemon=True).start()
