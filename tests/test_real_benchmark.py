"""benchmarks/real.py, the real-photo study, through its driver with fake subprocess runs: the
arms and their pretrainings, the supervised reference cut to its ResNet, the probe of every
trunk, the bar and the table."""
import json
import os

import pytest
import torch

from train_helpers import load_script


@pytest.fixture
def bench():
    return load_script("benchmarks/real.py", "real_bench")


# Box AP of a fake fine-tuning run by the folder its weights come from, at seed s.
FAKE_AP = {"": lambda s: 5.0 + s, "pretrain_soco": lambda s: 9.0 + 1.1 * s,
           "pretrain_aligndet": lambda s: 12.0, "pretrain_montage": lambda s: 4.0,
           "supervised_trunk": lambda s: 15.0 + s}


@pytest.fixture
def fake_runs(bench, monkeypatch):
    """Every subprocess step replaced by what it would write; returns the commands run."""
    harness = bench.harness
    commands = []

    def run_logged(cmd, log_path):
        commands.append(cmd[1:])
        script = cmd[1]
        if script == "tools/probe.py":
            weights = cmd[cmd.index("--weights") + 1:cmd.index("--out")]
            rows = [{"trunk": w, "knn_head_bal": 0.1 + 0.01 * i} for i, w in enumerate(weights)]
            harness.write_json(cmd[cmd.index("--out") + 1], {"results": rows})
            return 0, 1.0
        if script in ("tools/plot_probe.py", "tools/plot_finetune.py"):
            open(cmd[cmd.index("--out") + 1], "wb").close()
            return 0, 1.0
        i = cmd.index("--num-gpus") + 2 + ("--resume" in cmd)
        opts = dict(zip(cmd[i::2], cmd[i + 1::2]))
        out, config = opts["OUTPUT_DIR"], cmd[cmd.index("--config-file") + 1]
        os.makedirs(out, exist_ok=True)
        iters = int(opts["SOLVER.MAX_ITER"]) if "SOLVER.MAX_ITER" in opts else harness.config_max_iter(config)
        records = [{"iteration": k, "total_loss": 1.0} for k in range(iters)]
        if config.startswith(("configs/transfer/", "configs/supervised/")):
            if config.startswith("configs/supervised/"):
                t = torch.ones(1)
                torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": t, "backbone.fpn_lateral2.weight": t,
                                      "roi_heads.box_head.fc1.weight": t}}, os.path.join(out, "model_final.pth"))
            source = next((k for k in FAKE_AP if k and k in opts["MODEL.WEIGHTS"]), "")
            ap = FAKE_AP[source](int(opts["SEED"]))
            records.append({"iteration": len(records) - 1, "bbox/AP": ap, "bbox/AP50": 2 * ap})
        else:
            open(os.path.join(out, harness.TRUNK_FILE), "wb").close()
            torch.save({"iteration": iters - 1}, os.path.join(out, "model_final.pth"))  # the full state
            harness.write_json(os.path.join(out, "probe.json"), {
                "dataset": "imagenette_160_val_select",
                "probes": [{"iteration": 0, "when": "initialisation", "knn_head": 0.2},
                           {"iteration": 2, "when": "final", "knn_head": 0.3}]})
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in records) + "\n")
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(f"SEED: {opts['SEED']}\n")
        return 0, 60.0

    monkeypatch.setattr(harness, "run_logged", run_logged)
    monkeypatch.setattr(bench, "run_logged", run_logged)
    monkeypatch.setattr(bench.STUDY, "prepare_data", lambda dataset: None)
    return commands


def test_real_study_runs_every_arm_and_reports_the_bar(bench, fake_runs, tmp_path, capsys):
    assert bench.main(["--finetune-iters", "10", "--output-root", str(tmp_path)]) == 0
    configs = [c[2] for c in fake_runs if c[0] == "train_net.py"]
    # pretrainings first: SoCo, AlignDet from SoCo's trunk, Montage, the supervised reference
    assert configs[:4] == [bench.SOCO_CONFIG, bench.ALIGNDET_CONFIG, bench.MONTAGE_CONFIG, bench.SUPERVISED_CONFIG]
    aligndet = next(c for c in fake_runs if bench.ALIGNDET_CONFIG in c)
    assert aligndet[aligndet.index("MODEL.WEIGHTS") + 1].endswith(os.path.join("pretrain_soco", "model_final_trunk.pth"))
    # the supervised reference keeps its ResNet only
    trunk = torch.load(tmp_path / "supervised_trunk.pth", weights_only=True)["model"]
    assert list(trunk) == ["backbone.bottom_up.stem.conv1.weight"]
    # 5 arms x 3 seeds fine-tuned with one config, differing in the weights only
    finetunes = [c for c in fake_runs if c[0] == "train_net.py" and c[2] == bench.FINETUNE_CONFIG]
    assert len(finetunes) == 15
    # every trunk probed on both probe sets, random init first
    probes = [c for c in fake_runs if c[0] == "tools/probe.py"]
    assert [c[c.index("--dataset") + 1] for c in probes] == ["imagenette_160_val_report", "aquarium_valid"]
    weights = probes[0][probes[0].index("--weights") + 1:probes[0].index("--out")]
    assert weights[0] == "random" and len(weights) == 5

    result = json.loads((tmp_path / "real.json").read_text())
    summary = result["summary"]["aquarium"]
    assert summary["delta_soco_minus_random"]["bbox_AP"]["values"] == pytest.approx([4.0, 4.1, 4.2])
    assert result["bar"]["met"] is True  # +4.1 >= 2 and far above 2 std (0.1)
    assert summary["delta_aligndet_minus_soco"]["bbox_AP"]["mean"] == pytest.approx(12.0 - 10.1)
    assert set(result["arm_pretraining"]) == {"soco", "aligndet", "montage", "supervised"}
    assert result["arm_pretraining"]["aligndet"]["wall_s"] == 120.0  # SoCo's and its own
    assert result["probes"]["Aquarium"]["soco"]["knn_head_bal"] == pytest.approx(0.12)

    out = capsys.readouterr().out
    assert "kNN bal Imagenette" in out and "kNN bal Aquarium" in out and "pretrain min" in out
    assert "SoCo - random box AP (paired) +4.10" in out and "True" in out
    assert "probe curves: " in out
    curves = next(c for c in fake_runs if c[0] == "tools/plot_finetune.py")
    # every fine-tuning run's evaluations, labelled by arm and seed
    assert any(c.startswith("soco_seed2=") and c.endswith(os.path.join("aquarium", "soco_seed2")) for c in curves)
    assert len([c for c in curves if "_seed" in c]) == 15
    assert "fine-tuning curves: " in out

    # everything is reused the second time: no training and no probe again
    plots = ("tools/plot_probe.py", "tools/plot_finetune.py")
    done = len([c for c in fake_runs if c[0] not in plots])
    assert bench.main(["--finetune-iters", "10", "--output-root", str(tmp_path)]) == 0
    assert len([c for c in fake_runs if c[0] not in plots]) == done


def test_real_study_without_the_bar_arm_has_no_bar(bench, fake_runs, tmp_path):
    assert bench.main(["--arms", "random", "montage", "--seeds", "0", "--finetune-iters", "4",
                       "--output-root", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "real.json").read_text())
    assert "bar" not in result  # no SoCo arm, no bar
    assert [c[2] for c in fake_runs if c[0] == "train_net.py"][0] == bench.MONTAGE_CONFIG


def test_adding_an_arm_probes_that_arm_only_and_a_changed_trunk_again(bench, fake_runs, tmp_path):
    def probed():
        calls = [c for c in fake_runs if c[0] == "tools/probe.py"]
        fake_runs.clear()
        return [c[c.index("--weights") + 1:c.index("--out")] for c in calls]

    args = ["--seeds", "0", "--finetune-iters", "4", "--output-root", str(tmp_path)]
    assert bench.main(["--arms", "random", "soco"] + args) == 0
    soco = os.path.join(str(tmp_path), "pretrain_soco", "model_final_trunk.pth")
    assert probed() == [["random", soco]] * 2  # Imagenette, then Aquarium
    first = json.loads((tmp_path / "probe_aquarium_valid.json").read_text())

    assert bench.main(["--arms", "random", "soco", "supervised"] + args) == 0
    supervised = os.path.join(str(tmp_path), "supervised_trunk.pth")
    assert probed() == [[supervised]] * 2
    result = json.loads((tmp_path / "real.json").read_text())
    # the rows of the first call are kept as they were, the new arm's added
    assert result["probes"]["Aquarium"]["soco"] == first["results"][1]
    assert result["probes"]["Aquarium"]["supervised"]["trunk"] == supervised
    assert not list(tmp_path.glob("*.new.json"))

    # a trunk file rewritten since its probe is probed again; the others are not
    st = os.stat(soco)
    os.utime(soco, (st.st_atime, st.st_mtime + 10))
    assert bench.main(["--arms", "random", "soco", "supervised"] + args) == 0
    assert probed() == [[soco]] * 2


def test_pretrain_root_fine_tunes_an_earlier_invocations_trunks_without_pretraining(bench, fake_runs, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    arms = ["--arms", "random", "soco", "supervised", "--seeds", "0"]
    assert bench.main(arms + ["--finetune-iters", "4", "--output-root", str(first)]) == 0
    fake_runs.clear()
    # another fine-tuning setting, the same pretrainings
    assert bench.main(arms + ["--finetune-iters", "6", "--output-root", str(second),
                              "--pretrain-root", str(first)]) == 0
    trained = [c for c in fake_runs if c[0] == "train_net.py"]
    assert {c[2] for c in trained} == {bench.FINETUNE_CONFIG}  # no pretraining ran again
    weights = sorted(c[c.index("MODEL.WEIGHTS") + 1] for c in trained)
    assert weights[1:] == sorted([os.path.join(str(first), "pretrain_soco", "model_final_trunk.pth"),
                                  os.path.join(str(first), "supervised_trunk.pth")])
    assert all(c[c.index("OUTPUT_DIR") + 1].startswith(str(second)) for c in trained)
    result = json.loads((second / "real.json").read_text())
    assert result["settings"]["pretrain_root"] == str(first)
    assert result["settings"]["finetune_iters"] == 6
    assert result["pretraining"]["soco"]["reused"] is True


def test_pretrain_root_must_be_a_folder(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--pretrain-root", str(tmp_path / "absent")])
    assert "--pretrain-root" in capsys.readouterr().err
