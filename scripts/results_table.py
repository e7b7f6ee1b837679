"""Print Markdown tables from evaluation JSON files (python -m core.evaluate --out ...).

    python scripts/results_table.py NAME=FILE.json [NAME=FILE.json ...]
"""

from __future__ import annotations

import json
import sys

STAGES = ["cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label", "seg_crf_label"]


def main(argv: list[str]) -> int:
    rows = []
    for item in argv:
        name, _, path = item.partition("=")
        data = json.load(open(path or name))
        cells = []
        for stage in STAGES:
            entry = data["stages"].get(stage)
            cells.append(f"{100 * entry['miou']:.1f}" if entry and entry.get("miou") is not None else "-")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {100 * data.get('cls_f1', float('nan')):.1f} | "
                    f"{data.get('n_images', '?')} |")
    print("| model | " + " | ".join(STAGES) + " | cls F1 | images |")
    print("|---" * (len(STAGES) + 3) + "|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
