"""benchmarks/simdetr.py, the SimDETR real-photo study, through its driver with fake subprocess runs
(benchmarks/real.py's fakes): SoCo first, its semantic proposals and their recall, the SimDETR
pretrainings on them from SoCo's trunk (1 and 2 rounds), the arms differing in the weights only,
the bars."""
import json
import os
import sys

import pytest

import test_real_benchmark
from test_real_benchmark import fake_runs  # noqa: F401  (fixture)
from train_helpers import load_script


@pytest.fixture
def bench():
    return load_script("benchmarks/simdetr.py", "simdetr_bench")


@pytest.fixture
def runs(bench, fake_runs, monkeypatch):  # noqa: F811
    """fake_runs, plus the proposal job and the recall benchmark; SimDETR trunks fine-tune to
    13 + s AP."""
    harness = bench.harness
    base = harness.run_logged

    def run_logged(cmd, log_path):
        script = cmd[1]
        if script in ("tools/generate_proposals.py", "benchmarks/proposal_recall.py"):
            fake_runs.append(cmd[1:])
            out = cmd[cmd.index("--output" if script.startswith("tools") else "--out") + 1]
            if script.startswith("tools"):
                open(out, "wb").close()
            else:
                figures = {"recall_at_0_5": 0.5, "recall_filtered_at_0_5": 0.9, "proposals_per_image": 14.0}
                harness.write_json(out, {"results": {"selective_search": figures, "semantic": figures}})
            return 0, 30.0
        return base(cmd, log_path)

    for module in (harness, bench, sys.modules[bench.RealStudy.__module__]):
        monkeypatch.setattr(module, "run_logged", run_logged)
    monkeypatch.setitem(test_real_benchmark.FAKE_AP, "pretrain_simdetr", lambda s: 13.0 + s)
    return fake_runs


def test_simdetr_study_chains_soco_semantic_proposals_and_simdetr(bench, runs, tmp_path, capsys):
    assert bench.main(["--finetune-iters", "10", "--output-root", str(tmp_path)]) == 0
    steps = [(c[0], c[2] if c[0] == "train_net.py" else None) for c in runs]
    soco = steps.index(("train_net.py", bench.SimDETRStudy.pretrainings["soco"].config))
    proposals = steps.index(("tools/generate_proposals.py", None))
    simdetr = [i for i, s in enumerate(steps) if s == ("train_net.py", bench.SIMDETR_CONFIG)]
    assert soco < proposals < simdetr[0] and len(simdetr) == 2
    gen = runs[proposals]
    trunk = gen[gen.index("--from-features") + 1]
    assert trunk.endswith(os.path.join("pretrain_soco", "model_final_trunk.pth"))
    for i, rounds in zip(simdetr, ("1", "2")):
        cmd = runs[i]
        assert cmd[cmd.index("MODEL.WEIGHTS") + 1] == bench.rel(trunk)
        assert cmd[cmd.index("MODEL.SIMDETR.ROUNDS") + 1] == rounds
        assert bench.PROPOSALS in cmd[cmd.index("DATASETS.SOCO_REGISTER") + 1]
    # the 2-round run continues the 1-round run's final state instead of training round 0 again
    assert "--resume" not in runs[simdetr[0]] and "--resume" in runs[simdetr[1]]
    assert [c[0] for c in runs].count("benchmarks/proposal_recall.py") == 2
    finetunes = [c for c in runs if c[0] == "train_net.py" and c[2] == bench.SimDETRStudy.finetune_config]
    assert len(finetunes) == 15  # 5 arms x 3 seeds

    result = json.loads((tmp_path / "simdetr.json").read_text())
    summary = result["summary"]["aquarium"]
    assert summary["delta_simdetr2_minus_random"]["bbox_AP"]["values"] == pytest.approx([8.0, 8.0, 8.0])
    assert summary["delta_simdetr2_minus_soco"]["bbox_AP"]["mean"] == pytest.approx(14.0 - 10.1)
    assert "delta_simdetr1_minus_aligndet" in summary
    assert result["simdetr_bars"]["simdetr1"]["met"] is True
    assert set(result["proposal_recall"]) == {"Aquarium valid", "COCO sample"}
    two = result["pretraining"]["simdetr2"]
    assert two["continues"].endswith("pretrain_simdetr1") and two["continued_at"] == 300
    chain = result["arm_pretraining"]["simdetr2"]
    assert chain["pretrainings"] == ["soco", "simdetr1", "simdetr2"]
    assert chain["wall_s"] == sum(result["pretraining"][k]["wall_s"] for k in chain["pretrainings"])
    out = capsys.readouterr().out
    assert "SoCo -> SimDETR 2 rounds - random box AP (paired) +8.00" in out
    assert "recall@0.5 on Aquarium valid: selective_search 0.500" in out

    # everything is reused the second time: no training again
    trained = len([c for c in runs if c[0] == "train_net.py"])
    assert bench.main(["--finetune-iters", "10", "--output-root", str(tmp_path)]) == 0
    assert len([c for c in runs if c[0] == "train_net.py"]) == trained


def test_score_threshold_ablation_continues_the_one_round_run(bench, runs, tmp_path):
    """simdetr2_score01 is opt-in; it is simdetr2 with SCORE_THRESH 0.1, continuing the same
    1-round run (round 0 trained once for both), and is paired with simdetr2 and simdetr1."""
    assert "simdetr2_score01" not in bench.STUDY.default_arms
    assert bench.main(["--arms", "random", "simdetr1", "simdetr2", "simdetr2_score01", "--seeds", "0", "1",
                       "--finetune-iters", "10", "--output-root", str(tmp_path)]) == 0
    simdetr = [c for c in runs if c[0] == "train_net.py" and c[2] == bench.SIMDETR_CONFIG]
    assert len(simdetr) == 3  # round 0 once, then the two second rounds
    one, two, ablation = simdetr
    assert "MODEL.SIMDETR.SCORE_THRESH" not in one and "MODEL.SIMDETR.SCORE_THRESH" not in two
    assert ablation[ablation.index("MODEL.SIMDETR.SCORE_THRESH") + 1] == "0.1"
    assert ablation[ablation.index("MODEL.SIMDETR.ROUNDS") + 1] == "2" and "--resume" in ablation
    result = json.loads((tmp_path / "simdetr.json").read_text())
    assert result["pretraining"]["simdetr2_score01"]["continues"].endswith("pretrain_simdetr1")
    assert result["arm_pretraining"]["simdetr2_score01"]["pretrainings"] == ["soco", "simdetr1", "simdetr2_score01"]
    summary = result["summary"]["aquarium"]
    assert {"delta_simdetr2_score01_minus_random", "delta_simdetr2_score01_minus_simdetr2",
            "delta_simdetr2_score01_minus_simdetr1"} <= set(summary)
    assert "simdetr2_score01" in result["simdetr_bars"]
