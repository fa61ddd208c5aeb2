"""tools/plot_probe.py: the probe curves of pretraining runs, random init as a line."""
import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

import plot_probe  # noqa: E402


def _probe(iteration, when, knn, stored=None):
    row = {"iteration": iteration, "when": when, "knn_head_bal": knn, "knn_pooled_bal": knn / 2}
    if stored is not None:
        row["stored_bn"] = {"knn_head_bal": stored}
    return row


def _run(tmp_path, name, probes, dataset="imagenette_160_val_select"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "probe.json").write_text(json.dumps({"dataset": dataset, "probes": probes}))
    return str(folder)


def test_curve_counts_iterations_trained_and_keeps_the_last_of_a_duplicate():
    data = {"probes": [_probe(0, "initialisation", 0.10), _probe(199, "periodic", 0.20),
                       _probe(199, "final", 0.25), _probe(399, "final", 0.30)]}
    # initialisation: 0 iterations done; a probe after step 199 has seen 200 steps
    assert plot_probe.curve(data, "knn_head_bal", stored_bn=False) == [(0, 0.10), (200, 0.25), (400, 0.30)]
    # a resumed run's first probe also runs before a step
    resumed = {"probes": [_probe(200, "resumed", 0.22)]}
    assert plot_probe.curve(resumed, "knn_head_bal", stored_bn=False) == [(200, 0.22)]


def test_stored_bn_curve_reads_the_stored_bn_figures():
    data = {"probes": [_probe(0, "initialisation", 0.10, stored=0.27), _probe(99, "final", 0.2)]}
    # the second probe has no stored-BN figures: it is left out, not read as 0
    assert plot_probe.curve(data, "knn_head_bal", stored_bn=True) == [(0, 0.27)]


def test_plot_writes_a_png_and_prints_each_curve_and_the_random_line(tmp_path, capsys):
    a = _run(tmp_path, "a", [_probe(0, "initialisation", 0.10), _probe(99, "final", 0.30)])
    b = _run(tmp_path, "b", [_probe(0, "initialisation", 0.20), _probe(99, "final", 0.26)])
    out = tmp_path / "plots" / "curve.png"
    assert plot_probe.main([a, f"second={b}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out.parent) if ".tmp-" in p]
    text = capsys.readouterr().out
    assert "knn_head_bal a: 0: 0.100, 100: 0.300" in text
    assert "knn_head_bal second: 0: 0.200, 100: 0.260" in text
    # random init: the mean of the runs' first probes, their range beside it
    assert "knn_head_bal random init: 0.150 (range 0.100-0.200)" in text
    assert "knn_pooled_bal random init: 0.075 (range 0.050-0.100)" in text


def test_random_line_from_a_probe_py_file(tmp_path, capsys):
    a = _run(tmp_path, "a", [_probe(0, "initialisation", 0.10), _probe(99, "final", 0.30)])
    rows = tmp_path / "probe.json"
    rows.write_text(json.dumps({"results": [{"trunk": "random", "knn_head_bal": 0.123},
                                            {"trunk": "x.pth", "knn_head_bal": 0.5}]}))
    plot_probe.main([a, "--metrics", "knn_head_bal", "--random-json", str(rows), "--out", str(tmp_path / "c.png")])
    assert "knn_head_bal random init: 0.123 (range 0.123-0.123)" in capsys.readouterr().out
    rows.write_text(json.dumps({"results": [{"trunk": "x.pth", "knn_head_bal": 0.5}]}))
    with pytest.raises(SystemExit, match="has no 'random' row with knn_head_bal"):
        plot_probe.main([a, "--metrics", "knn_head_bal", "--random-json", str(rows), "--out", str(tmp_path / "c.png")])


def test_bad_runs_are_named(tmp_path):
    with pytest.raises(SystemExit, match="No probe.json at .*missing"):
        plot_probe.main([str(tmp_path / "missing"), "--out", str(tmp_path / "c.png")])
    empty = _run(tmp_path, "empty", [])
    with pytest.raises(SystemExit, match="empty.*holds no probe"):
        plot_probe.main([empty, "--out", str(tmp_path / "c.png")])
