"""A first-in first-out queue of past target embeddings, used as extra negatives of a
contrastive loss (MoCo's dictionary queue, He et al. 2020).

A small batch gives InfoNCE few negatives (SoCo at batch 16 with K = 4 has 64 objects per view
pair); embeddings of the momentum target from the last ``Q / (N K)`` iterations are nearly as
good and cost one (M, Q) product. The queue is a module with buffers, so checkpoints carry it and
a resumed run continues with the same negatives; with several processes every rank enqueues the
embeddings of all ranks (all-gather), so the queue is the same everywhere.

Shape shorthand: Q queue size, D embedding dimension, M embeddings enqueued at once.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingQueue"]


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """(M, D) of this rank -> (world * M, D), ranks in order (all ranks enqueue the same M)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class EmbeddingQueue(nn.Module):
    """The last ``size`` L2-normalised embeddings of dimension ``dim``, oldest overwritten first.

    Buffers: ``embeddings`` (Q, D), ``ptr`` (the next row to write) and ``count`` (rows filled,
    at most Q). :meth:`negatives` returns only the filled rows, so a fresh queue adds nothing.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"EmbeddingQueue needs size >= 1 and dim >= 1, got {size}, {dim}")
        self.size = int(size)
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def negatives(self) -> torch.Tensor:
        """(min(count, Q), D) the embeddings held, in no particular order."""
        return self.embeddings[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Add (M, D) embeddings (normalised here, of every rank), overwriting the oldest."""
        x = F.normalize(_all_gather(x.detach().float()), dim=1)
        if len(x) >= self.size:  # more than fit: keep the newest
            x = x[-self.size:]
        rows = (int(self.ptr) + torch.arange(len(x), device=x.device)) % self.size
        self.embeddings[rows] = x.to(self.embeddings.dtype)
        self.ptr.fill_((int(self.ptr) + len(x)) % self.size)
        self.count.fill_(min(self.size, int(self.count) + len(x)))
