"""What the plotting tools share (tools/plot_probe.py, tools/plot_finetune.py): ``LABEL=PATH``
arguments naming a run folder or its file, and writing a figure atomically."""
import os
from typing import Tuple


def run_file(spec: str, filename: str) -> Tuple[str, str]:
    """``(label, file)`` of a run argument ``LABEL=PATH`` or ``PATH``: PATH is a run folder holding
    ``filename`` or that file itself; the label defaults to the folder's name. Exits naming PATH
    when there is no such file."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    file = os.path.join(path, filename) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise SystemExit(f"No {filename} at {path}")
    return label or os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(file)))), file


def save_figure(fig, out: str, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``out``, written to a temporary file first (a reader never sees half)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, out)
