"""Reading Detectron2's ``metrics.json`` back (one JSON record per line), for the benchmark
harness and tools/plot_finetune.py. Light on purpose: no torch or Detectron2 import."""
import json
from typing import List, Tuple


def read_records(path: str) -> Tuple[List[dict], List[int]]:
    """(records, numbers of the lines that are not JSON) of a ``metrics.json``. A line cut by a
    crash mid-write is skipped, not fatal: the records around it still count. Blank lines are
    ignored. Raises ``OSError`` when the file cannot be read."""
    records, bad = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                bad.append(n)
    return records, bad
