"""What the plotting tools share (tools/plot_probe.py, tools/plot_finetune.py): ``LABEL=PATH``
arguments and writing a figure atomically."""
import os
from typing import Tuple


def split_label(spec: str) -> Tuple[str, str]:
    """``("LABEL", "PATH")`` of ``LABEL=PATH``; ``("", PATH)`` of a bare path."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    return label, path


def save_figure(fig, out: str, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``out``, written to a temporary file first (a reader never sees half)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, out)
