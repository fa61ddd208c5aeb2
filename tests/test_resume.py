"""Exact resume after kill -9, and atomic checkpoints (tiny CPU runs through train_net.main).

Why the resumed run is bit-identical to the uninterrupted one on the CPU with one thread:
the data of iteration i is a pure function of (SEED, global sample numbers of i) (images,
crops, colour: soco_d2/data/sample_stream.py), the model has no randomness in its forward pass, the
checkpoint restores every other input of the next step (online and target weights, BN buffers,
LARS momentum buffers, LR scheduler, iteration; the momentum schedule is a function of the
iteration), and single-threaded CPU kernels run the same operations in the same order.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from train_helpers import INSTANT, REPO_ROOT, TrainArgs, dataset_opts



def _opts(tiny_images, output_dir, max_iter=6):
    return [
        "OUTPUT_DIR", str(output_dir),
        "SEED", "7",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", "2",
        *dataset_opts("test_resume_syn", tiny_images),
    ]


# Run as a separate process: train_net.main with one extra hook that kills the process with
# SIGKILL right after iteration KILL_AT (0-based), i.e. mid-run, after the checkpoint of
# iteration KILL_AT - 1 was written and one more step was taken that no checkpoint holds.
_KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {repo!r})
    from detectron2.engine import HookBase
    import train_net
    from soco_d2.methods.soco import SoCoTrainer

    class KillHook(HookBase):
        def after_step(self):
            if self.trainer.iter == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    build_hooks = SoCoTrainer.build_hooks
    SoCoTrainer.build_hooks = lambda self: build_hooks(self) + [KillHook()]

    class Args:
        config_file, opts = {config!r}, json.loads(sys.argv[1])
        eval_only, resume = False, False
        num_gpus, num_machines, machine_rank = 1, 1, 0

    train_net.main(Args())
""")


def _flatten(obj, prefix=""):
    """Nested dicts/lists of a checkpoint -> {path: leaf}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def _assert_same_checkpoint(a_path, b_path):
    a = _flatten(torch.load(a_path, map_location="cpu", weights_only=False))
    b = _flatten(torch.load(b_path, map_location="cpu", weights_only=False))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            if not torch.equal(a[key], b[key]):
                diff = (a[key].double() - b[key].double()).abs().max().item()
                raise AssertionError(f"{key} differs (max |a - b| = {diff:g})")
        else:
            assert a[key] == b[key], f"{key}: {a[key]} != {b[key]}"
    return a


def _metrics(path):
    with open(path) as f:
        return {row["iteration"]: row for row in map(json.loads, f)}


def test_kill9_then_resume_reaches_the_same_state(tiny_images, tmp_path, one_thread):
    from train_net import main

    # A: uninterrupted, 6 iterations, checkpoints after iterations 2, 4 and 6.
    main(TrainArgs(_opts(tiny_images, tmp_path / "a")))

    # B: the same job, killed by SIGKILL during iteration 5 (after the iteration-4 checkpoint).
    b = tmp_path / "b"
    script = _KILLED_RUN.format(repo=REPO_ROOT, kill_at=4, config=INSTANT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(_opts(tiny_images, b))],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (b / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (b / "model_final.pth").exists()
    assert not [f for f in os.listdir(b) if ".tmp-" in f]

    # ... and resumed with --resume: iterations 5 and 6 again, from the checkpoint.
    main(TrainArgs(_opts(tiny_images, b), resume=True))

    ckpt = _assert_same_checkpoint(tmp_path / "a" / "model_final.pth", b / "model_final.pth")
    # What was compared: online and target weights, LARS buffers, scheduler, iteration, seed.
    assert ckpt["/iteration"] == 5
    assert any(k.startswith("/model/target.backbone.") for k in ckpt)
    assert any("momentum_buffer" in k for k in ckpt)
    assert any(k.startswith("/trainer/hooks/LRScheduler") for k in ckpt)
    assert ckpt["/trainer/data_stream/seed"] == 7
    # The iteration-4 checkpoints are identical too (B's was written before the kill).
    _assert_same_checkpoint(tmp_path / "a" / "model_0000003.pth", b / "model_0000003.pth")
    # Same momentum and LR logged at the end (momentum is a function of the iteration only;
    # losses are logged smoothed over the run's own history, so they are not compared).
    ma, mb = _metrics(tmp_path / "a" / "metrics.json"), _metrics(b / "metrics.json")
    assert ma[5]["soco/momentum"] == mb[5]["soco/momentum"] == pytest.approx(1.0)
    assert ma[5]["lr"] == mb[5]["lr"]


# ------------------------------------------------------------------ atomic checkpoints


def _checkpointer(tmp_path):
    from soco_d2.engine.checkpoint import AtomicDetectionCheckpointer

    model = torch.nn.Linear(3, 2)
    return model, AtomicDetectionCheckpointer(model, str(tmp_path))


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    real_save = torch.save

    def crash_mid_save(obj, f, *args, **kwargs):
        f.write(b"\x80\x02 half a checkpoint")  # some bytes reach the file, then the crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash_mid_save)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save("model_0000003")
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    fresh, loader = _checkpointer(tmp_path)
    assert loader.has_checkpoint()
    loader.resume_or_load("", resume=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, good[k])


def test_crash_while_tagging_keeps_last_checkpoint_readable(tmp_path, monkeypatch):
    from soco_d2.engine import checkpoint as mod

    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")
    real_replace = os.replace

    def fail_on_tag(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError("killed while renaming (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(mod.os, "replace", fail_on_tag)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save("model_0000003")
    # The new checkpoint is complete under its name; the tag still names the previous one.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    torch.load(tmp_path / "model_0000003.pth", weights_only=False)


def test_leftover_of_a_killed_save_is_ignored_and_cleaned(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")
    leftover = tmp_path / ".model_0000003.pth.tmp-123-deadbeef"  # what a SIGKILL leaves
    leftover.write_bytes(b"partial")
    assert ckpt.get_all_checkpoint_files() == [str(tmp_path / "model_0000001.pth")]
    ckpt.save("model_0000003")
    assert not leftover.exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"


# ------------------------------------------------------------------ non-finite loss


def _nan_at(monkeypatch, iteration):
    """Make SoCo's training forward return a NaN loss at ``iteration`` (graph kept)."""
    from detectron2.utils.events import get_event_storage

    from soco_d2.methods.soco import SoCo

    forward = SoCo.forward

    def patched(self, batched_inputs):
        out = forward(self, batched_inputs)
        if self.training and get_event_storage().iter == iteration:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(SoCo, "forward", patched)


def test_non_finite_loss_stops_with_iteration_and_terms(
    tiny_images, tmp_path, monkeypatch, one_thread
):
    from soco_d2.methods.soco import SoCoTrainer
    from soco_d2.engine.checkpoint import AtomicDetectionCheckpointer
    from train_net import main, setup

    _nan_at(monkeypatch, 3)
    # Detectron2's SimpleTrainer checks the (all-rank averaged) losses before optimizer.step.
    with pytest.raises(FloatingPointError, match=r"iteration=3!\nloss_dict = {'loss_soco': nan"):
        main(TrainArgs(_opts(tiny_images, tmp_path)))
    monkeypatch.undo()

    # Nothing of the failed run's end is written; the last good checkpoint loads.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_final.pth").exists()
    assert not (tmp_path / "model_final_trunk.pth").exists()
    model = SoCoTrainer.build_model(setup(TrainArgs(_opts(tiny_images, tmp_path / "reload"))))
    state = AtomicDetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert state["iteration"] == 1
    weights = [v for v in model.state_dict().values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)


def test_non_finite_loss_at_the_last_iteration_exports_no_trunk(
    tiny_images, tmp_path, monkeypatch, one_thread
):
    from train_net import main

    _nan_at(monkeypatch, 1)
    with pytest.raises(FloatingPointError, match="iteration=1!"):
        main(TrainArgs(_opts(tiny_images, tmp_path, max_iter=2) + ["SOLVER.CHECKPOINT_PERIOD", "1"]))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (tmp_path / "model_final.pth").exists()
    assert not (tmp_path / "model_final_trunk.pth").exists()
