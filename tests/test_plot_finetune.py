"""tools/plot_finetune.py: the evaluation curves of fine-tuning runs from their metrics.json."""
import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

import plot_finetune  # noqa: E402


def _run(tmp_path, name, aps, bad_line=False):
    folder = tmp_path / name
    folder.mkdir()
    lines = [json.dumps({"iteration": 299, "total_loss": 1.0})]
    lines += [json.dumps({"iteration": it, "bbox/AP": ap, "bbox/AP50": 2 * ap}) for it, ap in aps]
    if bad_line:
        lines.append('{"iteration": 3')  # cut mid-write
    (folder / "metrics.json").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_curve_counts_iterations_trained_and_keeps_the_last_evaluation_of_an_iteration():
    records = [{"iteration": 149, "bbox/AP": 0.1}, {"iteration": 160, "total_loss": 2.0},
               {"iteration": 199, "bbox/AP": 0.2}, {"iteration": 199, "bbox/AP": 0.25},
               {"iteration": 299, "total_loss": 1.0}, {"iteration": 300, "bbox/AP": 0.3}]
    # periodic at step 150 and 200 (the second of a repeated one), the last one after training:
    # Detectron2 logs it at MAX_ITER (300), after the 300th step, not the 301st
    assert plot_finetune.curve(records, "bbox/AP") == [(150, 0.1), (200, 0.25), (300, 0.3)]
    assert plot_finetune.curve(records, "bbox/AP50") == []


def test_arm_of_groups_the_seeds_of_an_arm():
    assert plot_finetune.arm_of("soco_seed2") == plot_finetune.arm_of("soco seed 0") == "soco"
    assert plot_finetune.arm_of("random") == "random"


def test_main_writes_the_png_and_prints_each_curve(tmp_path, capsys):
    a = _run(tmp_path, "random_seed0", [(149, 0.01), (299, 0.08)], bad_line=True)
    b = _run(tmp_path, "soco_seed0", [(149, 0.11), (299, 0.21)])
    out = tmp_path / "plots" / "curve.png"
    assert plot_finetune.main([a, f"SoCo={b}", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    printed = capsys.readouterr()
    assert "bbox/AP random_seed0: 150: 0.01, 300: 0.08" in printed.out
    assert "bbox/AP50 SoCo: 150: 0.22, 300: 0.42" in printed.out
    assert "metrics.json:4: not JSON, skipped" in printed.err


def test_clear_errors_for_a_missing_file_and_runs_without_an_evaluation(tmp_path):
    with pytest.raises(SystemExit, match="No metrics.json at"):
        plot_finetune.main([str(tmp_path / "absent"), "--out", str(tmp_path / "x.png")])
    empty = _run(tmp_path, "not_evaluated", [])
    with pytest.raises(SystemExit, match="no evaluation yet"):
        plot_finetune.main([empty, "--out", str(tmp_path / "x.png")])
