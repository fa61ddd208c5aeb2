"""Seconds per SoCo training step on the CPU, ResNet-50-FPN, batch 4, views 224/224/112, K=4.

    python benchmarks/pretrain_step.py --out pretrain_step.json [--steps 8 --warmup 2]

A step is what the trainer does per iteration: forward of online and target networks,
backward, LARS step and momentum update of the target. Measured in fp32 and with bf16 CPU
autocast (the trainer's mixed precision on CPU, SOLVER.AMP.ENABLED), channels-last as configured. The batch is mapped once from real
images (../shared/data/coco_sample, or synthetic scenes when it is absent) so data loading is
not timed. Peak memory is the process's maximum resident set size.

Reference on this machine kind: the SoCo authors' implementation takes 4.4 s per step in this
setting; the target is <= 2.2 s.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from soco_d2 import add_soco_config  # noqa: E402
from soco_d2.data import list_coco_images  # noqa: E402
from soco_d2.methods.soco.mapper import SoCoDatasetMapper  # noqa: E402
from soco_d2.modeling import momentum_at  # noqa: E402
from soco_d2.solver import build_soco_optimizer  # noqa: E402

REFERENCE_S_PER_STEP = 4.4


def bench_cfg(args):
    cfg = add_soco_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "soco", "Base-SoCo-R50-FPN.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        # one process: SyncBN would be plain BN anyway
        "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
        "MODEL.SOCO.HEAD_NORM", "BN",
        "SOLVER.IMS_PER_BATCH", args.batch, "SOLVER.AMP.ENABLED", False,
        "INPUT.SOCO.NUM_PROPOSALS", args.k,
    ])
    cfg.merge_from_list(args.opts)
    return cfg


def image_records(n, data_dir):
    json_file = os.path.join(data_dir, "instances.json")
    if os.path.isfile(json_file):
        items = list_coco_images(json_file, os.path.join(data_dir, "images"))[:n]
        return [{"file_name": p, "image_id": i} for i, p in items], "coco_sample"
    from soco_d2.data.synthetic import generate_synthetic_dataset

    out = tempfile.mkdtemp(prefix="soco_bench_")
    paths = generate_synthetic_dataset(out, num_train=n, num_val=0)
    items = list_coco_images(*paths["train"])
    return [{"file_name": p, "image_id": i} for i, p in items], "synthetic"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data", "coco_sample"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="first one is the headline s_per_step_median")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_cfg(args)

    import random

    import numpy as np

    np.random.seed(0)
    random.seed(0)
    records, source = image_records(args.batch, args.data)
    for r in records:  # random proposals so every image has boxes; the mapper picks K of them
        h, w = 480, 640
        xy = np.random.uniform(0, 0.4, (30, 2)) * [w, h]
        wh = np.random.uniform(0.3, 0.6, (30, 2)) * [w, h]
        r["proposal_boxes"] = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    mapper = SoCoDatasetMapper(cfg, is_train=True)
    batch = [mapper(dict(r)) for r in records]

    medians = {}
    for precision in args.precision:
        times = measure(cfg, batch, precision, args.warmup, args.steps)
        medians[precision] = statistics.median(times)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    headline = args.precision[0]
    result = {
        "s_per_step_median": medians[headline],
        "precision": headline,
        **{f"s_per_step_median_{p}": t for p, t in medians.items()},
        "peak_rss_mb": round(peak_rss_mb, 1),
        "reference_s_per_step": REFERENCE_S_PER_STEP,
        "speedup_vs_reference": {p: REFERENCE_S_PER_STEP / t for p, t in medians.items()},
        "setting": {
            "backbone": f"R{cfg.MODEL.RESNETS.DEPTH}-FPN", "batch": args.batch, "k": args.k,
            "views": [cfg.INPUT.SOCO.VIEW1_SIZE, cfg.INPUT.SOCO.VIEW2_SIZE, cfg.INPUT.SOCO.VIEW3_SIZE],
            "channels_last": cfg.MODEL.SOCO.CHANNELS_LAST,
            "steps": args.steps, "warmup": args.warmup, "images": source,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        },
    }
    print()
    for p, t in medians.items():
        print(f"{p:>5}: median {t:.3f} s/step (reference {REFERENCE_S_PER_STEP} s fp32: "
              f"{REFERENCE_S_PER_STEP / t:.2f}x)")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB (whole process)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


def measure(cfg, batch, precision, warmup, steps):
    """Seconds of each timed step; a fresh model and optimizer per precision."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_soco_optimizer(cfg, model)
    total = warmup + steps
    times = []
    for it in range(total):
        t0 = time.perf_counter()
        # bf16: CPU autocast as the trainer's CPUAutocastTrainer does (SOLVER.AMP.ENABLED)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(momentum_at(it + 1, total, cfg.MODEL.SOCO.MOMENTUM))
        dt = time.perf_counter() - t0
        if it >= warmup:
            times.append(dt)
        print(f"{precision} step {it:3d}  loss {loss.item():.4f}  {dt:.3f} s"
              f"{'  (warm-up)' if it < warmup else ''}")
    return times


if __name__ == "__main__":
    main()
