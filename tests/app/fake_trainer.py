"""A stand-in for ``python -m core.train`` with the same command line and run-folder output.

    python fake_trainer.py --config C --run-dir DIR [key=value ...]
    python fake_trainer.py --resume DIR

Understands ``train.max_iters=N`` and, for tests, ``fake.die_after=N`` (exit abruptly at step
N, leaving status "running" behind) and ``fake.step_time=S``. SIGTERM saves and exits cleanly.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--run-dir")
    parser.add_argument("--resume")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run_dir = Path(args.resume or args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opts = {"train.max_iters": 50, "fake.die_after": 0, "fake.step_time": 0.05}
    if args.resume:
        opts.update(json.loads((run_dir / "train_state.json").read_text())["opts"])
    for item in args.overrides:
        key, value = item.split("=", 1)
        opts[key] = float(value) if "." in value else int(value) if value.lstrip("-").isdigit() else value
    max_iters = int(opts["train.max_iters"])
    step = json.loads((run_dir / "train_state.json").read_text())["step"] if args.resume else 0
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

    def status(state, message=""):
        write_json(
            run_dir / "status.json",
            {
                "state": state,
                "step": step,
                "max_iters": max_iters,
                "pid": os.getpid(),
                "message": message,
                "updated": time.time(),
            },
        )

    def save():
        state = {"format": 1, "step": step, "opts": opts}
        # what core.runstate reads to decide that a run can be resumed: its JSON in the metadata
        save_file(
            {"step": np.array([step])},
            str(run_dir / "train_state.safetensors"),
            metadata={"train_state": json.dumps(state)},
        )
        write_json(run_dir / "train_state.json", state)
        (run_dir / "checkpoint.safetensors").write_bytes(b"fake")

    print(f"fake trainer pid {os.getpid()} from step {step}", flush=True)
    status("running")
    rng = np.random.default_rng(step)
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        while step < max_iters:
            if stop["flag"]:
                save()
                status("stopped", f"stopped at step {step}")
                return 0
            time.sleep(float(opts["fake.step_time"]))
            step += 1
            metrics.write(
                json.dumps(
                    {
                        "kind": "train",
                        "step": step,
                        "loss": 1.0 / step,
                        "loss_cls": 0.5 / step,
                        "step_time": float(opts["fake.step_time"]),
                    }
                )
                + "\n"
            )
            if step % 5 == 0:
                miou = {"cam_label": 0.9, "seg_label": step / max_iters}
                metrics.write(json.dumps({"kind": "eval", "step": step, "miou": miou}) + "\n")
                (run_dir / "samples").mkdir(exist_ok=True)
                np.savez(
                    run_dir / "samples" / "latest.npz",
                    image=rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8),
                    cam_label=rng.integers(0, 3, (2, 32, 32), dtype=np.uint8),
                    par_label=rng.integers(0, 3, (2, 32, 32), dtype=np.uint8),
                )
                save()
            metrics.flush()
            status("running")
            if int(opts["fake.die_after"]) and step >= int(opts["fake.die_after"]):
                os._exit(3)
    save()
    status("finished", "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
