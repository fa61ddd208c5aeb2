"""benchmarks/harness.py's driver: a tiny declared study goes through Study.main with fake
train_net.py runs (the subprocess step is replaced; everything above it is the real driver)."""
import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import harness  # noqa: E402

# Box AP of a fake fine-tuning run, by where its MODEL.WEIGHTS come from, at seed s.
FAKE_AP = {"": lambda s: 10.0 + s, "pretrain_ssl": lambda s: 13.0 + s, "pretrain_box": lambda s: 15.0 + 2 * s,
           "given.pth": lambda s: 9.0}
PRETRAIN_WALL_S = 120.0


class TinyStudy(harness.Study):
    name = "tiny"
    description = "A tiny study: random init vs two pretrainings, the second started from the first."
    datasets = ("scenes",)
    arms = {"random": "random", "ssl": "SSL", "chain": "SSL -> box", "file": "given weights"}
    default_arms = ["random", "ssl", "chain"]
    finetune_config = "configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml"
    pretrainings = {
        "ssl": harness.Pretraining("configs/soco/soco_demo_synthetic.yaml", opts=("DATASETS.TRAIN", '("photos",)')),
        "box": harness.Pretraining("configs/aligndet/aligndet_demo_synthetic.yaml", start_from="ssl"),
    }
    arm_weights = {"ssl": "ssl", "chain": "box", "file": "given.pth"}
    trunk_prefixes = {"ssl": ("backbone.",), "chain": ("backbone.", "proposal_generator.")}
    paired = [("chain", "ssl")]
    box_only = True

    def prepare_data(self, dataset):
        self.prepared.append(dataset)


@pytest.fixture
def fake_train_net(monkeypatch):
    """Replaces the subprocess step: a train_net.py run writes what the real one would read back
    (metrics.json, config.yaml; a pretraining its trunk and probe.json). Returns the commands."""
    commands = []

    def run_logged(cmd, log_path):
        commands.append(cmd[1:])
        i = cmd.index("--num-gpus") + 2
        opts = dict(zip(cmd[i::2], cmd[i + 1::2]))
        out = opts["OUTPUT_DIR"]
        os.makedirs(out, exist_ok=True)
        config = cmd[cmd.index("--config-file") + 1]
        records = [{"iteration": i, "total_loss": 1.0} for i in range(int(opts.get("SOLVER.MAX_ITER", 5)))]
        if config.startswith("configs/transfer/"):
            source = next((k for k in FAKE_AP if k and k in opts["MODEL.WEIGHTS"]), "")
            ap = FAKE_AP[source](int(opts["SEED"]))
            records.append({"iteration": len(records) - 1, "bbox/AP": ap, "bbox/AP50": 2 * ap})
            wall = 30.0
        else:
            open(os.path.join(out, harness.TRUNK_FILE), "wb").close()
            knn = 0.5 if "aligndet" in config else 0.4
            with open(os.path.join(out, "probe.json"), "w") as f:
                json.dump({"dataset": "val", "probes": [{"iteration": 0, "knn_head": 0.25},
                                                        {"iteration": 4, "knn_head": knn}]}, f)
            wall = PRETRAIN_WALL_S
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in records) + "\n")
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(f"SEED: {opts['SEED']}\n")
        return 0, wall

    monkeypatch.setattr(harness, "run_logged", run_logged)
    return commands


def test_a_declared_study_runs_through_the_driver(tmp_path, fake_train_net, capsys):
    study = TinyStudy()
    study.prepared = []
    argv = ["--arms", "random", "ssl", "chain", "file", "--finetune-iters", "6", "--output-root", str(tmp_path)]
    assert study.main(argv) == 0
    assert study.prepared == ["scenes"]

    # the pretrainings: each run once, the second from the first one's trunk
    pretrainings = [c for c in fake_train_net if not c[2].startswith("configs/transfer/")]
    assert [c[2] for c in pretrainings] == ["configs/soco/soco_demo_synthetic.yaml",
                                            "configs/aligndet/aligndet_demo_synthetic.yaml"]
    box = dict(zip(pretrainings[1][5::2], pretrainings[1][6::2]))
    assert box["MODEL.WEIGHTS"] == os.path.join(str(tmp_path), "pretrain_ssl", harness.TRUNK_FILE)
    assert box["OUTPUT_DIR"] == os.path.join(str(tmp_path), "pretrain_box") and box["SEED"] == "0"
    # fine-tuning: every seed in every arm, arms interleaved, differing only in the weights
    finetuning = [dict(zip(c[5::2], c[6::2])) for c in fake_train_net if c[2].startswith("configs/transfer/")]
    assert [(o["SEED"], os.path.basename(o["OUTPUT_DIR"])) for o in finetuning[:4]] == [
        ("0", "random_seed0"), ("0", "ssl_seed0"), ("0", "chain_seed0"), ("0", "file_seed0")]
    assert len(finetuning) == 12 and finetuning[3]["MODEL.WEIGHTS"] == "given.pth"
    for o in finetuning:
        assert os.path.dirname(o.pop("OUTPUT_DIR")) == os.path.join(str(tmp_path), "scenes")
        o.pop("MODEL.WEIGHTS"), o.pop("SEED")
    assert all(o == finetuning[0] for o in finetuning) and finetuning[0]["SOLVER.MAX_ITER"] == "6"

    with open(tmp_path / "tiny.json") as f:
        result = json.load(f)
    assert result["benchmark"] == "tiny" and result["command"][:2] == ["python", "benchmarks/tiny.py"]
    assert list(result["pretraining"]) == ["ssl", "box"] and result["settings"]["arms"]["chain"] == "SSL -> box"
    assert result["settings"]["pretrainings"]["box"]["start_from"] == "ssl"
    assert [(r["arm"], r["seed"], r["dataset"]) for r in result["runs"][:2]] == [("random", 0, "scenes"), ("ssl", 0, "scenes")]
    summary = result["summary"]["scenes"]
    assert summary["random"]["bbox_AP"]["mean"] == pytest.approx(11.0)
    assert summary["delta_ssl_minus_random"]["bbox_AP"]["values"] == [3.0, 3.0, 3.0]
    assert summary["delta_chain_minus_random"]["bbox_AP"]["values"] == [5.0, 6.0, 7.0]
    assert summary["delta_chain_minus_ssl"]["bbox_AP"] == {"mean": 3.0, "std": 1.0, "values": [2.0, 3.0, 4.0]}
    # each arm's pretrainings beside it: the chain's wall time is both runs', its probe the last one's
    chain = result["arm_pretraining"]["chain"]
    assert chain["pretrainings"] == ["ssl", "box"] and chain["wall_s"] == 2 * PRETRAIN_WALL_S
    assert chain["probe"]["last"]["knn_head"] == 0.5 and "file" not in result["arm_pretraining"]

    out = capsys.readouterr().out
    table = out[out.index("\ninit ") + 1:].splitlines()
    assert table[0].split() == ["init", "n", "box", "AP", "box", "AP50", "probe", "kNN", "pretrain", "min"]
    rows = {line[:34].strip(): line[34:].split() for line in table[2:]}
    assert rows["random init"][:4] == ["3", "11.00", "±", "1.00"] and rows["random init"][-2:] == ["-", "-"]
    assert rows["SSL init"][-4:] == ["0.250", "->", "0.400", "2.0"]
    assert rows["SSL -> box init"][-4:] == ["0.250", "->", "0.500", "4.0"]
    assert rows["SSL -> box - SSL (paired)"] == ["3", "+3.00", "±", "1.00"]
    assert rows["given weights - random (paired)"][:2] == ["3", "-2.00"]
    assert f"JSON: {tmp_path / 'tiny.json'}" in out

    # a second invocation reuses every run: no train_net.py, the same summary
    done = len(fake_train_net)
    assert study.main(argv) == 0
    assert len(fake_train_net) == done
    with open(tmp_path / "tiny.json") as f:
        again = json.load(f)
    assert again["summary"] == result["summary"] and all(r["reused"] for r in again["runs"])


def test_the_shared_flags_of_a_declared_study(tmp_path):
    study = TinyStudy()
    args = study.parse_args(["--output-root", str(tmp_path)])
    assert args.arms == ["random", "ssl", "chain"] and args.seeds == [0, 1, 2] and not hasattr(args, "datasets")
    assert args.out == os.path.join(str(tmp_path), "tiny.json")
    assert study.parse_args([]).output_root == os.path.join(REPO_ROOT, "output", "tiny_bench")
    with pytest.raises(SystemExit):
        study.parse_args(["--arms", "ssl", "random"])  # the baseline first
    # only the arms that run get weights (and only their pretrainings run)
    assert study.pretraining_chain("chain") == ["ssl", "box"] and study.pretraining_chain("random") == []


def test_finetune_opts_reach_every_finetuning_run_and_no_pretraining(tmp_path, fake_train_net):
    study = TinyStudy()
    study.prepared = []
    argv = ["--arms", "random", "ssl", "--seeds", "0", "1", "--finetune-iters", "6", "--output-root", str(tmp_path),
            "--finetune-opts", "MODEL.BACKBONE.FREEZE_AT", "5", "SOLVER.BASE_LR", "0.04"]
    assert study.main(argv) == 0
    runs = [dict(zip(c[5::2], c[6::2])) for c in fake_train_net]
    finetuning = [o for c, o in zip(fake_train_net, runs) if c[2].startswith("configs/transfer/")]
    assert len(finetuning) == 4
    for o in finetuning:  # after the study's own overrides, before SEED / OUTPUT_DIR
        assert o["MODEL.BACKBONE.FREEZE_AT"] == "5" and o["SOLVER.BASE_LR"] == "0.04"
    assert all("MODEL.BACKBONE.FREEZE_AT" not in o for c, o in zip(fake_train_net, runs)
               if not c[2].startswith("configs/transfer/"))
    with open(tmp_path / "tiny.json") as f:
        settings = json.load(f)["settings"]
    assert settings["finetune_opts"] == ["MODEL.BACKBONE.FREEZE_AT", "5", "SOLVER.BASE_LR", "0.04"]
    # the same folder with other overrides is refused, not silently mixed into the table
    with pytest.raises(SystemExit, match="holds a result made with other settings"):
        study.main(argv[:-2])


@pytest.mark.parametrize("opts, message", [(["SOLVER.BASE_LR"], "KEY VALUE pairs"),
                                           (["SEED", "3"], "SEED is what the study sets")])
def test_finetune_opts_are_checked(tmp_path, capsys, opts, message):
    with pytest.raises(SystemExit):
        TinyStudy().parse_args(["--output-root", str(tmp_path), "--finetune-opts", *opts])
    assert message in capsys.readouterr().err


def test_config_fingerprint_follows_what_the_config_says_not_its_comments(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.02\n")
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 600\n')
    first = harness.config_fingerprint(str(child))
    child.write_text(f'# a comment\n_BASE_: "{base}"\nSOLVER:\n    MAX_ITER: 600  # why\n')
    assert harness.config_fingerprint(str(child)) == first
    base.write_text("SOLVER:\n  BASE_LR: 0.01\n")  # a value of a base changes it
    assert harness.config_fingerprint(str(child)) != first
    # repo-relative paths and model-zoo bases resolve
    assert len(harness.config_fingerprint("configs/transfer/faster_rcnn_R18_FPN_aquarium.yaml")) == 16


def test_a_result_made_with_another_config_is_not_reused(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text("SOLVER:\n  MAX_ITER: 600\n")
    done = {"config_fingerprint": harness.config_fingerprint(str(config))}
    harness.check_config(done, str(config), str(tmp_path))  # the same: reused
    harness.check_config({}, str(config), str(tmp_path))  # recorded before fingerprints: trusted
    config.write_text("SOLVER:\n  MAX_ITER: 900\n")
    with pytest.raises(SystemExit, match="said something else"):
        harness.check_config(done, str(config), str(tmp_path))


def test_training_seconds_is_detectron2s_speed_times_the_iterations_hooks_excluded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert harness.training_seconds(str(run)) is None  # no log
    (run / "metrics.json").write_text("\n".join(json.dumps({"iteration": i}) for i in range(100)) + "\n")
    (run / "log.txt").write_text(
        "[12/07 06:42:29] d2.engine.hooks INFO: Overall training speed: 48 iterations in 0:04:00 (5.0000 s / it)\n"
        "[12/07 06:55:03] d2.evaluation.evaluator INFO: Total inference time: 0:12:31.13\n"
        # resumed: the last session's speed counts
        "[12/07 07:42:29] d2.engine.hooks INFO: Overall training speed: 45 iterations in 0:04:30 (6.0000 s / it)\n")
    assert harness.training_seconds(str(run)) == pytest.approx(600.0)
    result = {"arm_pretraining": {"a": {"wall_s": 900.0, "train_s": 600.0}, "b": {"wall_s": 120.0, "train_s": None}}}
    assert harness.Study().columns(result)["pretrain min"] == {"a": "10.0", "b": "2.0"}  # wall where unknown


def test_a_pretraining_record_carries_its_training_time_run_or_reused(tmp_path, monkeypatch):
    out = str(tmp_path / "pretrain")

    def run_logged(cmd, log_path):
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, harness.TRUNK_FILE), "wb").close()
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write("\n".join(json.dumps({"iteration": i, "total_loss": 1.0}) for i in range(4)) + "\n")
        with open(os.path.join(out, "log.txt"), "w") as f:
            f.write("[12/07 06:42:29] d2.engine.hooks INFO: Overall training speed: 2 iterations in "
                    "0:00:05 (2.5000 s / it)\n")
        return 0, 60.0

    monkeypatch.setattr(harness, "run_logged", run_logged)
    args = ("[ssl]", {"method": "SSL"}, "configs/soco/soco_demo_synthetic.yaml", ["OUTPUT_DIR", out], out, False)
    record = harness.run_pretraining(*args)
    assert (record["wall_s"], record["train_s"], record["reused"]) == (60.0, 10.0, False)  # 2.5 s / it x 4
    again = harness.run_pretraining(*args)
    assert (again["train_s"], again["reused"]) == (10.0, True)
