"""benchmarks/gpu_step.py runs end to end (CPU smoke test, fp32, tiny model): the JSON has the
step figures per batch, the profiler's top ops and the data pipeline's rate."""
import json

from train_helpers import load_script

TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", "64", "MODEL.SOCO.PROJECTOR_DIM", "32",
        "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", "64",
        "INPUT.SOCO.VIEW1_SIZE", "64", "INPUT.SOCO.VIEW2_SIZE", "64", "INPUT.SOCO.VIEW3_SIZE", "32"]


def test_cpu_smoke(tmp_path, one_thread):
    bench = load_script("benchmarks/gpu_step.py")
    out = tmp_path / "gpu.json"
    bench.main(["--out", str(out), "--device", "cpu", "--dtype", "fp32", "--batches", "2", "--steps", "1",
                "--warmup", "0", "--workers", "1", "--pipeline-images", "3", "--images", "2", *TINY])
    data = json.loads(out.read_text())
    entry = data["batches"]["2"]
    assert entry["images_per_s"] > 0 and entry["s_per_step_median"] > 0
    assert entry["peak_memory_gib"] is None  # CPU: no GPU memory figure
    assert entry["profile_top_ops"] and all(0 <= op["share"] <= 1 for op in entry["profile_top_ops"])
    assert data["data_pipeline"]["images_per_s"] > 0
