"""Parallel, resumable proposal generation, written as a Detectron2 proposal file.

Output (``DATASETS.PROPOSAL_FILES_TRAIN``, read by ``detectron2.data.load_proposals_into_dataset``):
a pickle ``{"ids", "boxes", "objectness_logits", "bbox_mode"}`` with float32 XYXY_ABS boxes in
original image pixels and strictly decreasing logits (``-rank``), images in input order.

- Progress is kept in ``OUT.partial/``: ``manifest.json`` (hashes of the image list and of the
  settings; a rerun with other inputs is refused), chunk pickles each written atomically, and a
  lock file (a second concurrent job on the same output is refused). A rerun after a crash or
  ``kill -9`` redoes only the images missing from the chunks and writes the same bytes as an
  uninterrupted run, whatever the number of workers.
- The final file is written atomically (temp file, fsync, os.replace), then the partial folder
  is removed.
- Unusable images (missing, empty, corrupt, truncated, tiny, or crashing a worker) are skipped
  and listed in ``OUT.failures.json``: a job report ``{"n_images", "n_done", "n_failed",
  "items_sha256", "settings_sha256", "settings", ..., "failures": [{"id", "path", "reason",
  "detail"}]}``; its hashes also tell :func:`is_up_to_date` that ``OUT`` is complete.

What computes an image's proposals is the job's *proposer*: an object with ``__call__(path) ->
Proposals`` (raising :class:`ImageReadError` for an unusable image), ``to_dict()`` (the settings
that identify the output, hashed into the manifest and the report) and optionally
``init_worker()`` (run once in each worker process, e.g. to use one thread) and
``start_method`` (the multiprocessing start method its workers need: a proposer that runs
torch must not be forked from a process whose OpenMP pool has run, the child can hang in it,
so it asks for "spawn" and is pickled to each worker). A
:class:`ProposalSettings` stands for selective search (:class:`SelectiveSearchProposer`, whose
``to_dict()`` is the settings', so hashes of earlier jobs stay valid); semantic proposals from a
backbone's features are :class:`soco_d2.data.proposals.semantic.SemanticProposer`.
"""
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from ...utils.atomic_io import atomic_write_bytes
from ..decode import ImageReadError
from .selective_search import ProposalSettings, propose_image

__all__ = ["JobSummary", "SelectiveSearchProposer", "generate_proposals", "is_up_to_date", "partial_dir",
           "failures_path"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PICKLE_PROTOCOL = 4
# Test hooks (not for users): exit abruptly once this many images were flushed by this run /
# sleep this many seconds per image.
_ENV_FAIL_AFTER = "SOCO_PROPOSALS_FAIL_AFTER"
_ENV_SLEEP = "SOCO_PROPOSALS_SLEEP"

ImageId = Union[int, str]


def partial_dir(output: str) -> str:
    return output + ".partial"


def failures_path(output: str) -> str:
    return output + ".failures.json"


@dataclass
class JobSummary:
    output: Optional[str]           # None when no image succeeded (nothing written)
    failures_file: str
    n_images: int
    n_done: int                     # images with proposals in the output
    n_failed: int
    n_resumed: int                  # results taken over from an interrupted run
    n_processed: int                # images processed by this call
    proposals_per_image: float
    stage_counts: Dict[str, int] = field(default_factory=dict)
    failure_reasons: Dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- per image

class SelectiveSearchProposer:
    """The proposer of a selective-search job (module docstring): ``propose_image`` with
    ``settings``."""

    def __init__(self, settings: ProposalSettings = ProposalSettings()):
        self.settings = settings

    def to_dict(self) -> dict:
        return self.settings.to_dict()

    def __call__(self, path: str):
        return propose_image(path, self.settings)

    def __repr__(self) -> str:
        return repr(self.settings)


def _as_proposer(proposer):
    """A proposer (module docstring); a :class:`ProposalSettings` means selective search."""
    return SelectiveSearchProposer(proposer) if isinstance(proposer, ProposalSettings) else proposer


_WORKER_PROPOSER = None
_LOCK_FD: Optional[int] = None  # the job's lock on its partial folder (see _lock_partial)


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(proposer) -> None:
    global _WORKER_PROPOSER
    _WORKER_PROPOSER = proposer
    if _LOCK_FD is not None:  # a forked copy: the lock must die with the main process
        try:
            os.close(_LOCK_FD)
        except OSError:
            pass
    cv2.setNumThreads(1)  # one worker = one core
    if hasattr(proposer, "init_worker"):
        proposer.init_worker()
    # Executor workers would outlive a main process killed with -9: leave when it is gone.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _process(index: int, path: str, proposer) -> dict:
    sleep = float(os.environ.get(_ENV_SLEEP, "0") or 0)
    if sleep > 0:
        time.sleep(sleep)
    try:
        p = proposer(path)
    except ImageReadError as e:
        return {"index": index, "failure": e.reason, "detail": e.detail}
    except Exception as e:  # never let one image kill the job
        return {"index": index, "failure": "error", "detail": f"{type(e).__name__}: {e}"}
    return {"index": index, "boxes": p.boxes, "logits": p.objectness_logits, "stage": p.stage}


def _work(task: Tuple[int, str]) -> dict:
    return _process(task[0], task[1], _WORKER_PROPOSER)


def _run_pool(tasks: Sequence[Tuple[int, str]], workers: int, proposer,
              start_method: Optional[str]) -> Iterator[dict]:
    """Yield the records of ``tasks`` computed by ``workers`` processes, in completion order.

    A worker that dies (e.g. a crash in native code) breaks the executor; the images that were
    in flight are then retried one at a time in a fresh single-worker executor, and the one
    that kills it again is reported as failed ("crashed"), so the job neither hangs nor stops.
    """
    if start_method is None:
        start_method = getattr(proposer, "start_method", None)
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    queue, suspects = deque(tasks), deque()
    while queue or suspects:
        isolate = bool(suspects)
        source, limit = (suspects, 1) if isolate else (queue, 4 * workers)
        inflight = {}
        ex = ProcessPoolExecutor(1 if isolate else workers, mp_context=ctx,
                                 initializer=_init_worker, initargs=(proposer,))
        try:
            while source or inflight:
                while source and len(inflight) < limit:
                    task = source.popleft()
                    inflight[ex.submit(_work, task)] = task
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    rec = future.result()  # raises BrokenProcessPool if a worker died
                    del inflight[future]
                    yield rec
        except BrokenProcessPool:
            if isolate:
                (index, path), = inflight.values()
                logger.warning(f"A worker process died on image {path}; skipping it")
                yield {"index": index, "failure": "crashed", "detail": "worker process died"}
            else:
                logger.warning(f"A worker process died; retrying {len(inflight)} images one by one")
                suspects.extend(sorted(inflight.values()))
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- files

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _manifest(items: Sequence[Tuple[ImageId, str]], proposer) -> dict:
    settings = _as_proposer(proposer).to_dict()
    return {
        "format": FORMAT_VERSION,
        "n_images": len(items),
        "items_sha256": _digest([[i, p] for i, p in items]),
        "settings_sha256": _digest(settings),
        "settings": settings,
    }


def _lock_partial(folder: str) -> Optional[int]:
    """Take an exclusive lock on ``folder`` (released by the OS if this process dies)."""
    global _LOCK_FD
    try:
        import fcntl
    except ImportError:  # not on POSIX: no protection against two concurrent jobs
        return None
    fd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RuntimeError(f"Another job is writing {folder}; wait for it or stop it first")
    _LOCK_FD = fd
    return fd


def _unlock(fd: Optional[int]) -> None:
    global _LOCK_FD
    if fd is not None:
        os.close(fd)
        _LOCK_FD = None


def _open_partial(folder: str, manifest: dict) -> Tuple[Dict[int, dict], int]:
    """Create or validate ``folder``; return the saved records by index and the next chunk
    number."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path) and not any(n.startswith("chunk_") for n in os.listdir(folder)):
        atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())  # a fresh job
        return {}, 0
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"Partial results in {folder} have no readable manifest ({e}); delete that folder "
            "to start over.") from e
    for key, what in (("format", "file format"), ("items_sha256", "image list"),
                      ("settings_sha256", "proposal settings")):
        if old.get(key) != manifest[key]:
            raise RuntimeError(
                f"Partial results in {folder} were made with a different {what} than this "
                f"job's; resume with the same inputs and settings, or delete {folder} to start "
                "over.")
    records, next_chunk = {}, 0
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if ".tmp" in name:  # a write interrupted before its os.replace
            os.remove(full)
            continue
        if not (name.startswith("chunk_") and name.endswith(".pkl")):
            continue
        next_chunk = max(next_chunk, int(name[len("chunk_"):-len(".pkl")]) + 1)
        try:
            with open(full, "rb") as f:
                chunk = pickle.load(f)
        except Exception as e:  # cannot happen with atomic writes, but be safe: redo them
            logger.warning(f"Ignoring unreadable partial chunk {full}: {e}")
            continue
        for rec in chunk:
            records.setdefault(rec["index"], rec)
    return records, next_chunk


def is_up_to_date(items: Sequence[Tuple[ImageId, str]], output: str,
                  settings=ProposalSettings()) -> bool:
    """True if ``output`` was completed by a job over the same images and settings (judged by
    the hashes in its failures report) and no partial state is pending. ``settings``: a
    :class:`ProposalSettings` or a proposer (module docstring)."""
    report_file = failures_path(output)
    if not os.path.isfile(output) or not os.path.isfile(report_file) or os.path.isdir(partial_dir(output)):
        return False
    try:
        with open(report_file) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(report, dict):
        return False
    manifest = _manifest([(i, os.fspath(p)) for i, p in items], settings)
    return all(report.get(k) == manifest[k] for k in ("format", "items_sha256", "settings_sha256"))


# ----------------------------------------------------------------------------- job

def generate_proposals(
    items: Sequence[Tuple[ImageId, str]],
    output: str,
    settings=ProposalSettings(),
    workers: int = 1,
    flush_every: int = 200,
    flush_seconds: float = 60.0,
    progress: bool = True,
    start_method: Optional[str] = None,
) -> JobSummary:
    """Compute proposals for ``items`` = [(image_id, path)] and write them to ``output``.

    Args:
        settings: a :class:`ProposalSettings` (selective search) or a proposer (module
            docstring), e.g. a :class:`~soco_d2.data.proposals.semantic.SemanticProposer`.
        workers: processes; 0 or 1 runs in this process.
        flush_every, flush_seconds: save progress after this many images or seconds.
        start_method: multiprocessing start method (default: the proposer's ``start_method``,
            else "fork" where available, which avoids re-importing torch/Detectron2 in every
            worker, else "spawn").

    Returns:
        a :class:`JobSummary`. Nothing is written to ``output`` if no image succeeded.
    """
    t_start = time.perf_counter()
    items = [(int(i) if isinstance(i, np.integer) else i, os.fspath(p)) for i, p in items]
    ids = [image_id for image_id, _ in items]
    if len(set(map(str, ids))) != len(ids):
        raise ValueError("Image ids must be unique (also as strings, as Detectron2 matches them)")
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    folder = partial_dir(output)
    proposer = _as_proposer(settings)
    manifest = _manifest(items, proposer)
    os.makedirs(folder, exist_ok=True)
    lock = _lock_partial(folder)
    try:
        records, next_chunk = _open_partial(folder, manifest)
        n_resumed = len(records)
        todo = [i for i in range(len(items)) if i not in records]
        if n_resumed:
            logger.info(f"Resuming from {folder}: {n_resumed} of {len(items)} images already done")
        logger.info(f"Proposals for {len(todo)} images with {max(workers, 1)} worker(s); "
                    f"settings: {proposer}")
        _compute(items, todo, records, folder, next_chunk, proposer, workers, flush_every,
                 flush_seconds, progress, start_method)
        summary = _finish(items, records, output, manifest, n_resumed, len(todo))
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        _unlock(lock)
    summary.wall_time_s = time.perf_counter() - t_start
    _log_summary(summary, items, records)
    return summary


def _compute(items, todo, records, folder, next_chunk, proposer, workers, flush_every,
             flush_seconds, progress, start_method) -> None:
    """Process ``todo`` (indices into ``items``) into ``records``, saving chunks as it goes."""
    fail_after = int(os.environ.get(_ENV_FAIL_AFTER, "0") or 0)
    pending: List[dict] = []
    state = {"chunk": next_chunk, "flushed": 0, "last": time.monotonic()}

    def flush():
        if pending:
            name = os.path.join(folder, f"chunk_{state['chunk']:06d}.pkl")
            atomic_write_bytes(name, pickle.dumps(pending, protocol=PICKLE_PROTOCOL))
            state["chunk"] += 1
            state["flushed"] += len(pending)
            pending.clear()
        state["last"] = time.monotonic()
        if fail_after and state["flushed"] >= fail_after:
            os._exit(137)  # test hook: die like kill -9, right after a flush

    n_failed = sum("failure" in r for r in records.values())
    results = None
    old_threads = cv2.getNumThreads()
    try:
        if workers > 1 and len(todo) > 1:
            results = _run_pool([(i, items[i][1]) for i in todo], workers, proposer, start_method)
        else:
            cv2.setNumThreads(1)
            results = (_process(i, items[i][1], proposer) for i in todo)
        with tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="proposals",
                  disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar:
            bar.set_postfix(failed=n_failed)
            for rec in results:
                records[rec["index"]] = rec
                pending.append(rec)
                if "failure" in rec:
                    n_failed += 1
                    bar.set_postfix(failed=n_failed, refresh=False)
                bar.update(1)
                if len(pending) >= flush_every or time.monotonic() - state["last"] >= flush_seconds:
                    flush()
    finally:
        flush()  # keep what was computed, also on Ctrl-C
        if results is not None and hasattr(results, "close"):
            results.close()  # stops the workers
        cv2.setNumThreads(old_threads)


def _canonical(values, shape) -> np.ndarray:
    """A fresh float32 array using numpy's canonical float32 dtype object. Pickle memoises by
    object identity, so arrays whose dtype came out of an unpickled chunk (a distinct but equal
    dtype object) would otherwise serialise differently from freshly computed ones."""
    values = np.asarray(values).reshape(shape)
    arr = np.empty(values.shape, dtype=np.float32)
    arr[...] = values
    return arr


def _finish(items, records, output, manifest, n_resumed, n_processed) -> JobSummary:
    """Assemble the results in input order and write the output and failures files."""
    from detectron2.structures import BoxMode

    out = {"ids": [], "boxes": [], "objectness_logits": [], "bbox_mode": BoxMode.XYXY_ABS}
    failures, stages, reasons = [], Counter(), Counter()
    for index, (image_id, path) in enumerate(items):
        rec = records[index]
        if "failure" in rec:
            failures.append({"id": image_id, "path": path, "reason": rec["failure"],
                             "detail": rec.get("detail", "")})
            reasons[rec["failure"]] += 1
            continue
        out["ids"].append(image_id)
        out["boxes"].append(_canonical(rec["boxes"], (-1, 4)))
        out["objectness_logits"].append(_canonical(rec["logits"], (-1,)))
        stages[rec["stage"]] += 1
    n_done = len(out["ids"])
    if n_done:
        atomic_write_bytes(output, pickle.dumps(out, protocol=PICKLE_PROTOCOL))
    elif os.path.exists(output):
        logger.warning(f"Removing {output} of an earlier job: no image of this job succeeded")
        os.remove(output)
    report = dict(manifest, n_done=n_done, n_failed=len(failures), output_written=bool(n_done),
                  failures=failures)
    atomic_write_bytes(failures_path(output), (json.dumps(report, indent=1) + "\n").encode())
    n_props = sum(len(b) for b in out["boxes"])
    return JobSummary(
        output=output if n_done else None,
        failures_file=failures_path(output),
        n_images=len(items),
        n_done=n_done,
        n_failed=len(failures),
        n_resumed=n_resumed,
        n_processed=n_processed,
        proposals_per_image=n_props / n_done if n_done else 0.0,
        stage_counts=dict(stages),
        failure_reasons=dict(reasons),
    )


def _log_summary(s: JobSummary, items, records) -> None:
    rate = s.n_processed / s.wall_time_s if s.wall_time_s > 0 else 0.0
    logger.info(
        f"Proposals: {s.n_images} images, {s.n_done} done, {s.n_failed} failed "
        f"({s.n_resumed} resumed, {s.n_processed} processed now); "
        f"{s.proposals_per_image:.1f} proposals/image; filter stages {s.stage_counts}; "
        f"{s.wall_time_s:.1f} s ({rate:.1f} img/s)")
    if s.n_failed:
        failed = [(items[i], records[i]) for i in range(len(items)) if "failure" in records[i]]
        shown = "\n".join(f"  {image_id} {path}: {rec['failure']} {rec.get('detail', '')}"
                          for (image_id, path), rec in failed[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        logger.warning(f"{s.n_failed} images skipped ({s.failure_reasons}), listed in "
                       f"{s.failures_file}:\n{shown}{more}")
    if s.output:
        logger.info(f"Wrote {s.output}")
    else:
        logger.error("No image succeeded; no proposal file written")
