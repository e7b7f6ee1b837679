"""AFA Explorer: the Gradio app (Hugging Face Spaces entry point).

    python app.py [--public] [--port P] [--host H]
    gradio app.py            # reload mode; uses the module-level ``demo``

Public mode (``--public`` or the ``SPACE_ID`` environment variable set by Spaces): training is
capped to a small scenes run, no path can be typed, uploads are size-limited, and only the app's
own asset folder is served.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home, even before gradio loads

if os.environ.get("SPACE_ID"):
    try:  # ZeroGPU: the package patches torch before anything touches CUDA (see app/gpu.py)
        import spaces  # noqa: F401
    except ImportError:
        pass

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402

from app.ui import CSS, build_app  # noqa: E402

MAX_UPLOAD = os.environ.get("AFA_APP_MAX_UPLOAD", "10mb")
# System fonts: the default theme would make every browser fetch Google Fonts.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
)


def is_public(argv_flag: bool = False) -> bool:
    return argv_flag or bool(os.environ.get("SPACE_ID")) or os.environ.get("AFA_APP_PUBLIC", "") == "1"


def launch_kwargs(public: bool) -> dict:
    """Arguments for ``demo.launch`` that keep the server safe and offline."""
    assets = ROOT / "assets"
    blocked = [ROOT / name for name in ("checkpoints", "runs", "core", "tests", "data", ".git")]
    return dict(
        allowed_paths=[str(assets)],
        blocked_paths=[str(p) for p in blocked],
        max_file_size=MAX_UPLOAD if public else "50mb",
        show_error=False,
        css=CSS,
        theme=THEME,
        footer_links=["api"] if not public else [],
        ssr_mode=False,
        state_session_capacity=400 if public else 10000,  # bounds the memory held by sessions' images
        mcp_server=False,
    )


def queue(demo, public: bool):
    return demo.queue(default_concurrency_limit=1, max_size=64 if public else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public", action="store_true", help="Spaces-safe mode (also when SPACE_ID is set)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME"),
        help="interface to listen on (default 127.0.0.1; 0.0.0.0 with SPACE_ID set: Spaces route to it)",
    )
    parser.add_argument("--no-warm", action="store_true", help="skip analysing the first example at start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    public = is_public(args.public)
    host = args.host or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    app = queue(build_app(public=public, warm=not args.no_warm), public)
    app.launch(server_name=host, server_port=args.port, share=False, **launch_kwargs(public))


if __name__ == "__main__" and not os.environ.get("GRADIO_WATCH_DIRS"):
    main()
else:
    # ``gradio app.py`` runs this file with GRADIO_WATCH_DIRS set and serves ``demo``; an import
    # (``from app import demo`` style hosts) also finds it here.
    demo = queue(build_app(public=is_public()), is_public())
    if __name__ == "__main__":
        demo.launch(**launch_kwargs(is_public()))
