"""Connecting handlers to Gradio events.

A handler returns ``{view name: value}``; ``bind`` turns that into the tuple of outputs Gradio
expects, leaving the views a handler does not mention unchanged. Handlers that take
``progress=PROGRESS`` get Gradio's progress tracker (it finds it by that default value).
"""

# No ``from __future__ import annotations`` here: Gradio reads the ``gr.SelectData`` annotation.

import functools
import os

import gradio as gr

PROGRESS = gr.Progress()  # a no-op outside an event, so tests call the handlers directly

# Analyses queue (one at a time by default: a CPU is busy with one); clicks and sliders do not.
ANALYSIS = dict(
    concurrency_id="analysis", concurrency_limit=int(os.environ.get("AFA_APP_ANALYSIS_CONCURRENCY", "1"))
)
QUICK = dict(concurrency_id="quick", concurrency_limit=4, show_progress="hidden")


def outputs(components: dict, names) -> tuple[list[str], list]:
    """The names among ``names`` that are components, and those components."""
    names = [n for n in names if n in components]
    return names, [components[n] for n in names]


def bind(handler, names: list[str]):
    """``handler`` as Gradio calls it: same parameters (API docs and the progress tracker see
    them), the ``{view: value}`` it returns as a list over ``names`` (missing = unchanged)."""

    @functools.wraps(handler)
    def run(*args):
        views = handler(*args) or {}
        return [views.get(name, gr.skip()) for name in names]

    return run


def connect(event, handler, components: dict, inputs, names, **kwargs):
    """``event(bind(handler), inputs, outputs)`` with ``inputs`` and ``names`` given as names."""
    names, outs = outputs(components, names)
    return event(bind(handler, names), [components[n] for n in inputs], outs, **kwargs)
