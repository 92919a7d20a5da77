#!/usr/bin/env python3
"""Reads TensorBoard event files with TensorBoard's own reader (EventAccumulator) and prints
{run: {tag: [[step, value], ...]}} as JSON, runs being the directories under LOGDIR that hold
event files (e.g. `run`, `tasks/add`). Used by crates/trainer/tests/tensorboard.rs to check
coba-dist's event files against metrics.jsonl; needs `pip install tensorboard`.

Usage: read-tensorboard.py LOGDIR
"""
import json
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    logdir = sys.argv[1]
    out = {}
    for root, _dirs, files in sorted(os.walk(logdir)):
        if not any(f.startswith("events.out.tfevents.") for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"scalars": 0})
        acc.Reload()
        run = os.path.relpath(root, logdir)
        out[run] = {
            tag: [[e.step, e.value] for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]
        }
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
