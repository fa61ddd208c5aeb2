"""Checkpoints that are never half-written: a crash during a save keeps the last good one.

Detectron2 (fvcore) writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place, so a
job killed in the middle of a save leaves a truncated file under the final name, and
``--resume`` fails on it. :class:`AtomicDetectionCheckpointer` writes each file to a temporary
name in the same folder, fsyncs it and renames it over the final name (``os.replace`` is
atomic on POSIX), checkpoint first and ``last_checkpoint`` second. At any moment
``last_checkpoint`` therefore names a complete file.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import TMP_MARK, atomic_write

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose :meth:`save` and ``last_checkpoint`` are atomic.

    Same constructor and loading as DetectionCheckpointer (only the main process writes,
    ``save_to_disk`` defaults to ``comm.is_main_process()``). Leftovers of a save killed by
    SIGKILL are hidden files ``.<name>.tmp-*``, never the final name; the next save of the same
    name removes them. Save folders that are not local paths (``scheme://``) fall back to
    Detectron2's non-atomic save.
    """

    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_leftovers(basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    def _remove_leftovers(self, basename: str) -> None:
        prefix = f".{basename}{TMP_MARK}"
        for entry in os.listdir(self.save_dir):
            if entry.startswith(prefix):
                try:
                    os.remove(os.path.join(self.save_dir, entry))
                except OSError:
                    pass
