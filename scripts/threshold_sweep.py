"""The pseudo-label stages of a checkpoint under several background scores, with the random walk's
upper bound: the same walk with an oracle affinity.

    python scripts/threshold_sweep.py --checkpoint checkpoints/afa_mit_b0_scenes.safetensors \
        --data data/scenes --split train --limit 40 --bg 0.45 0.35 0.3 0.25 0.2 [--out R.json]

For each background score ``t`` the images are analysed as ``python -m core.evaluate --set
cam.bg_thresh=t`` scores them (ground-truth image labels, one background score for every stage)
and the dataset mIoU (%) of cam_label, par_label, rw_mhsa_label and rw_afa_label is printed.
``rw_oracle_label`` is the random walk of the same CAM, on the same token grid and radius, refined
by PAR in the same way, with the learned affinity replaced by the ground truth's: 1 for two tokens
of the same class (the mask resized to the grid, nearest), 0 otherwise: what propagating fully
along objects gives. When the oracle is not above par_label, averaging the CAM over an object
does not improve on PAR at that score; a learned affinity can still edge past PAR by averaging
less (a softer affinity, closer to the identity), not by completing objects (measured on the
scenes benchmark: docs/results/v4_trial/README.md). Two more rows
split what bounds the oracle: ``rw_identity_label`` runs the same pipeline with the identity as
affinity (the CAM taken to the walk's token grid and back, no propagation: what the grid alone
costs), and ``grid_truth_label`` puts the ground truth itself on that grid, one-hot, through the
same upsampling and PAR (the best any walk on that grid can output). ``--set key=value`` changes
method settings as ``core.evaluate --set`` does (e.g. ``"cam.scales=[1.0,0.75,2.0]"``: the walk
runs on the token grid of the largest CAM scale).

Choose scores on the training split: the validation split is for reporting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "rw_oracle_label", "rw_identity_label",
          "grid_truth_label")


def _inputs(analysis):
    import torch

    raw = torch.from_numpy(np.ascontiguousarray(analysis.image)).permute(2, 0, 1)[None].float()
    cam = torch.from_numpy(np.asarray(analysis.cam, dtype=np.float32))[None]
    cls_label = torch.zeros(1, cam.shape[1])
    cls_label[0, torch.as_tensor(np.asarray(analysis.present) - 1)] = 1.0
    return raw, cam, cls_label


def _walk_label(analysis, aff, cfg: dict) -> np.ndarray:
    """The propagated label of ``analysis``'s CAM with the affinity ``aff`` ``(1, N, N)``."""
    from core.method.labels import propagated_label, shared_par_kernel

    raw, cam, cls_label = _inputs(analysis)
    label = propagated_label(raw, cam, cls_label, aff, tuple(analysis.grid), cfg, shared_par_kernel(raw, cfg))
    return label[0].numpy()


def _grid_truth(analysis, gt: np.ndarray):
    """The ground truth on the walk's token grid (nearest), flattened: ``(N,)``."""
    import torch

    from core.method.affinity import token_labels

    return token_labels(torch.from_numpy(gt)[None], tuple(analysis.grid))[0]


def oracle_label(analysis, gt: np.ndarray, cfg: dict) -> np.ndarray:
    """The walk of ``analysis``'s CAM with the ground truth's affinity (see the module docstring)."""
    tokens = _grid_truth(analysis, gt)
    return _walk_label(analysis, (tokens[:, None] == tokens[None, :]).float()[None], cfg)


def identity_label(analysis, gt: np.ndarray, cfg: dict) -> np.ndarray:
    """The same pipeline with the identity as affinity: no propagation, only the CAM taken to the
    walk's token grid and back (what the grid's resolution costs before any affinity acts)."""
    import torch

    n = int(analysis.grid[0]) * int(analysis.grid[1])
    return _walk_label(analysis, torch.eye(n)[None], cfg)


def grid_truth_label(analysis, gt: np.ndarray, cfg: dict) -> np.ndarray:
    """The best any walk can output: the ground truth on its token grid as one-hot scores,
    upsampled and refined by PAR exactly as the walk's scores are (the grid's ceiling)."""
    import torch

    from core.method.labels import label_from_scores, shared_par_kernel

    raw, cam, cls_label = _inputs(analysis)
    tokens = _grid_truth(analysis, gt).long()
    c = cam.shape[1] + 1
    scores = torch.zeros(1, c, tokens.numel())
    known = tokens < c  # ignore tokens (255) get no score: background wins the argmax there
    scores[0, tokens[known], known.nonzero()[:, 0]] = 1.0
    scores = scores.reshape(1, c, *analysis.grid)
    return label_from_scores(raw, scores, scores, cls_label, cfg, shared_par_kernel(raw, cfg))[0].numpy()


def sweep(checkpoint: str, data: str, split: str, limit: int, scores: list[float],
          settings: list[str] | None = None) -> dict:
    from core import load_model
    from core.analyze import dense_settings
    from core.evaluate import apply_method_settings, evaluate_images, open_evaluation
    from core.method.metrics import ConfusionMatrix

    cfg, dataset = open_evaluation(checkpoint, data, split)
    model = load_model(checkpoint, device="cpu")
    num_classes = int(cfg["model"]["num_classes"])
    n = min(limit, len(dataset))
    out: dict = {"checkpoint": checkpoint, "data": data, "split": split, "n_images": n,
                 "settings": list(settings or []), "miou": {}}
    for t in scores:
        # dense: the only background score used
        apply_method_settings(model, cfg, [f"cam.bg_thresh={t}", *(settings or [])])
        dense = dense_settings(cfg)  # the settings analyze(dense=True) uses

        def walk_stage(fn, dense=dense):
            return lambda a, gt: fn(a, gt, dense) if a.grid is not None else None

        matrices = {s: ConfusionMatrix(num_classes) for s in STAGES}
        extra = {"rw_oracle_label": walk_stage(oracle_label), "rw_identity_label": walk_stage(identity_label),
                 "grid_truth_label": walk_stage(grid_truth_label)}
        for ev in evaluate_images(model, dataset, cfg, list(range(n)), extra_stages=extra):
            for s in STAGES:
                if s in ev.confusions:
                    matrices[s].merge(ev.confusions[s])
        row = {s: round(100 * m.miou(), 1) for s, m in matrices.items() if m.matrix.sum()}
        out["miou"][str(t)] = row
        cells = "  ".join(f"{s.replace('_label', '')} {v:.1f}" for s, v in row.items())
        print(f"bg {t:.2f}  {cells}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from core.errors import ArgumentParser

    p = ArgumentParser(prog="python scripts/threshold_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--bg", type=float, nargs="+", default=[0.45, 0.35, 0.3, 0.25, 0.2])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="method settings, as core.evaluate --set")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = sweep(args.checkpoint, args.data, args.split, args.limit, args.bg, args.set)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from core.errors import run_cli

    raise SystemExit(run_cli(main, "scripts/threshold_sweep.py"))
