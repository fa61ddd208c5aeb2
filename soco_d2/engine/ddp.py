"""What the trainers share with DefaultTrainer.__init__, made to work on CPU processes too.

Detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which
DistributedDataParallel rejects for a model on the CPU (several CPU processes talking over
gloo, as ``train_net.py --num-gpus N`` starts on a machine without CUDA). Here the device ids
are left out for CPU models, mixed precision fits the hardware (:func:`build_step_trainer`),
and :func:`finish_trainer_init` is the rest of ``DefaultTrainer.__init__`` after the model,
optimizer and data loader are built, for any DefaultTrainer subclass.
"""
import logging
import time
import weakref

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model

from .checkpoint import AtomicDetectionCheckpointer
from .precision import choose_cpu_precision

__all__ = ["AMP_DTYPES", "create_ddp_model_any_device", "build_step_trainer", "finish_trainer_init"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def create_ddp_model_any_device(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """``detectron2.engine.create_ddp_model`` that also wraps CPU models.

    With one process the model is returned as it is. On the CPU, DistributedDataParallel gets
    ``device_ids=None`` (required for CPU modules) unless the caller sets it.
    """
    if not next(model.parameters()).is_cuda:
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


class CPUAutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose forward runs under CPU autocast (bf16).

    Detectron2's AMPTrainer is CUDA-only. On CPUs with AMX / AVX512-BF16, bf16 convolutions
    are several times faster; BatchNorm, reductions and SoCo's loss stay in fp32 (autocast's
    rules), parameters and optimizer state stay fp32, and bf16 needs no loss scaling.
    """

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_step_trainer(cfg, model, data_loader, optimizer, cpu_features=None):
    """The trainer of one step, in the precision that fits the hardware.

    - ``SOLVER.AMP.ENABLED`` False: SimpleTrainer (fp32).
    - On a GPU: Detectron2's AMPTrainer in ``SOLVER.AMP.PRECISION`` (fp16 with loss scaling,
      or bf16, which has fp32's exponent range and needs none).
    - On a CPU: :class:`CPUAutocastTrainer` (bf16 autocast) where the CPU computes bf16
      natively (AMX / AVX512-BF16), SimpleTrainer (fp32) everywhere else, whatever
      ``SOLVER.AMP.PRECISION`` says; one log line names the choice and why
      (:func:`soco_d2.engine.precision.choose_cpu_precision`).

    Configs without the project's ``SOLVER.AMP.PRECISION`` key get Detectron2's fp16 on GPU.

    Args:
        cpu_features: the CPU's features (default: this machine's); for tests.
    """
    if not next(model.parameters()).is_cuda:
        choice = choose_cpu_precision(cfg.SOLVER.AMP.ENABLED, cpu_features)
        if cfg.SOLVER.AMP.ENABLED:
            logger.info(choice.reason)
        if choice.dtype == torch.bfloat16:
            return CPUAutocastTrainer(model, data_loader, optimizer)
        return SimpleTrainer(model, data_loader, optimizer)
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype = AMP_DTYPES[cfg.SOLVER.AMP.get("PRECISION", "float16")]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype)


def finish_trainer_init(trainer, cfg, model, optimizer, data_loader, **ddp_kwargs) -> None:
    """The end of ``DefaultTrainer.__init__``, given what its ``build_*`` methods returned.

    Wraps ``model`` in DDP (CPU or GPU; ``broadcast_buffers=False`` as Detectron2, plus
    ``ddp_kwargs``, e.g. ``find_unused_parameters=True``), builds the step trainer, the LR
    scheduler and the checkpointer (atomic saves, :mod:`.checkpoint`), sets the iteration
    range and ``trainer.cfg`` (to ``cfg``, which may differ from the caller's after
    auto-scaling), and registers ``trainer.build_hooks()``.
    """
    model = create_ddp_model_any_device(model, **{"broadcast_buffers": False, **ddp_kwargs})
    trainer._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
    trainer.scheduler = trainer.build_lr_scheduler(cfg, optimizer)
    trainer.checkpointer = AtomicDetectionCheckpointer(
        model, cfg.OUTPUT_DIR, trainer=weakref.proxy(trainer)
    )
    trainer.start_iter = 0
    trainer.max_iter = cfg.SOLVER.MAX_ITER
    trainer.cfg = cfg
    trainer.register_hooks(trainer.build_hooks())
