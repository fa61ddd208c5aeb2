#!/usr/bin/env python
"""SoCo's published R50-FPN recipe on one GPU: images/s and peak memory of the full training
step at several batch sizes, the data pipeline's images/s with N loader workers, and where the
step's time goes (profiler).

    # on the GPU machine, after tools/gpu_env.sh (see docs/gpu.md):
    python benchmarks/gpu_step.py --out gpu_step.json --batches 64 128 256 --workers 16
    # smoke test anywhere (CPU, fp32, tiny)
    python benchmarks/gpu_step.py --device cpu --dtype fp32 --batches 2 --steps 1 --warmup 0 \\
        --workers 0 --images 2 --out /tmp/gpu_step.json

A step is what the trainer does per iteration: forward of the online and the momentum-target
network on V1/V2 (224) and V3 (112) with K = 4 proposals per image, backward, LARS step and
the target's EMA update, in bf16 autocast (SOLVER.AMP, PRECISION bfloat16). BatchNorm is plain
BN (one process: SyncBN computes the same). The batch is mapped once on the CPU from synthetic
scenes (224-320 px, the embedded generator; ../shared does not travel to a GPU machine) with
random SoCo-filtered proposals, so data loading is not timed here; the data pipeline is timed
on its own (``--workers``), as images/s of the SoCo mapper in a torch DataLoader.

Physical budget: about 75 GFLOPs per image for the full step (the issue's estimate), so
1,500 images/s is about 15% of an H100's dense bf16 peak; the JSON reports the achieved
fraction with that estimate.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from soco_d2 import add_config  # noqa: E402
from soco_d2.config import load_config  # noqa: E402
from soco_d2.data.image_list import list_coco_images  # noqa: E402
from soco_d2.data.synthetic import generate_synthetic_dataset  # noqa: E402
from soco_d2.methods.soco.mapper import SoCoDatasetMapper  # noqa: E402
from soco_d2.methods.soco.views import random_proposals  # noqa: E402
from soco_d2.modeling import momentum_at  # noqa: E402
from soco_d2.solver import build_soco_optimizer  # noqa: E402

GFLOP_PER_IMAGE = 75.0
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def build_cfg(device: str, batch: int, opts):
    cfg = add_config(get_cfg())
    load_config(cfg, os.path.join(REPO_ROOT, "configs", "soco", "Base-SoCo-R50-FPN.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", device, "SOLVER.IMS_PER_BATCH", batch,
        "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
        "MODEL.SOCO.HEAD_NORM", "BN",
    ])
    cfg.merge_from_list(opts)
    return cfg


def make_records(n: int):
    """``n`` synthetic scenes (224-320 px) with 50 random SoCo-filtered proposals each."""
    out = tempfile.mkdtemp(prefix="soco_gpu_bench_")
    paths = generate_synthetic_dataset(out, num_train=n, num_val=0, min_size=224, max_size=320)
    rng = np.random.default_rng(0)
    records = []
    for image_id, path in list_coco_images(*paths["train"]):
        import cv2

        h, w = cv2.imread(path).shape[:2]
        records.append({"file_name": path, "image_id": image_id,
                        "proposal_boxes": random_proposals(rng, w, h, 50)})
    return records


def step_times(cfg, batch_inputs, steps: int, warmup: int, profile: bool, dtype=torch.bfloat16):
    """Seconds per full step, peak memory (bytes, GPU) and the profiler's top ops."""
    device = torch.device(cfg.MODEL.DEVICE)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_soco_optimizer(cfg, model)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def one_step(it):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = sum(model(batch_inputs).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(momentum_at(it + 1, 1000, cfg.MODEL.SOCO.MOMENTUM))
        return loss

    times = []
    for it in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = one_step(it)
        if cuda:
            torch.cuda.synchronize()
        if it >= warmup:
            times.append(time.perf_counter() - t0)
        print(f"  step {it} loss {float(loss):.3f} {time.perf_counter() - t0:.3f} s", flush=True)
    peak = torch.cuda.max_memory_allocated() if cuda else None

    top = []
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=activities) as prof:
            for it in range(2):
                one_step(it)
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
        total = sum(getattr(e, key, 0) for e in events) or 1
        for e in events[:15]:
            top.append({"op": e.key, "share": getattr(e, key, 0) / total,
                        "ms_per_step": getattr(e, key, 0) / 2 / 1000.0})
    return times, peak, top


def pipeline_images_per_s(cfg, records, workers: int, images: int) -> float:
    """Images/s of the SoCo mapper in a DataLoader with ``workers`` processes."""
    from soco_d2.data.sample_stream import SampleStreamDataset

    dataset = SampleStreamDataset(records, SoCoDatasetMapper(cfg, is_train=True), seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(images), num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    next(it)  # worker start-up not timed
    start = time.perf_counter()
    n = 1
    for _ in it:
        n += 1
    return (n - 1) / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the figures")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=16, help="loader workers of the pipeline test (0: skip)")
    p.add_argument("--pipeline-images", type=int, default=2000)
    p.add_argument("--images", type=int, default=256, help="distinct synthetic scenes to map")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="autocast dtype of the step (fp32: no autocast, e.g. a CPU smoke test)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available (use --device cpu for a smoke test)")

    records = make_records(args.images)
    result = {"setting": {
        "recipe": "configs/soco/Base-SoCo-R50-FPN.yaml (R50-FPN, views 224/224/112, K=4, LARS, bf16)",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup, "dtype": args.dtype,
    }, "batches": {}}
    gpu_name = result["setting"]["device"]
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in str(gpu_name)), None)
    for i, batch in enumerate(args.batches):
        cfg = build_cfg(args.device, batch, args.opts)
        mapper = SoCoDatasetMapper(cfg, is_train=True)
        inputs = [mapper(dict(records[j % len(records)]), seed=j) for j in range(batch)]
        print(f"batch {batch}:", flush=True)
        try:
            times, peak, top = step_times(cfg, inputs, args.steps, args.warmup,
                                          profile=(i == 0 and not args.no_profile),
                                          dtype=torch.bfloat16 if args.dtype == "bf16" else None)
        except torch.cuda.OutOfMemoryError as e:
            result["batches"][str(batch)] = {"error": f"out of memory: {e}"}
            print(f"  out of memory at batch {batch}")
            torch.cuda.empty_cache()
            continue
        median = statistics.median(times)
        entry = {"s_per_step_median": median, "images_per_s": batch / median,
                 "peak_memory_gib": None if peak is None else peak / 2**30}
        if peak_tflops:
            entry["fraction_of_bf16_peak"] = batch / median * GFLOP_PER_IMAGE / 1000.0 / peak_tflops
        if top:
            entry["profile_top_ops"] = top
        result["batches"][str(batch)] = entry
        print(f"  {entry['images_per_s']:.1f} images/s, {median:.3f} s/step"
              + ("" if peak is None else f", peak {entry['peak_memory_gib']:.1f} GiB"), flush=True)
    if args.workers > 0:
        cfg = build_cfg("cpu", 2, args.opts)
        ips = pipeline_images_per_s(cfg, records, args.workers, args.pipeline_images)
        result["data_pipeline"] = {"workers": args.workers, "images_per_s": ips}
        print(f"data pipeline: {ips:.0f} images/s with {args.workers} workers")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
