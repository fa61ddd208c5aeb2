"""k-means, the one implementation every method clusters with, and the matching of cluster ids
between two clusterings.

- :func:`kmeans`: Lloyd iterations from a k-means++ initialisation, all randomness from one
  ``torch.Generator``. ``spherical=True`` (the default) clusters L2-normalised vectors by cosine
  similarity and keeps the centroids on the unit sphere (label-free Montage's and SimDETR's
  pseudo-classes of box features); ``spherical=False`` is plain Euclidean k-means (centroids are
  means), for vectors whose norm carries meaning, e.g. SimDETR's per-image clustering of feature
  cells with their position appended (``soco_d2/data/proposals/semantic.py``).
- :func:`distributed_kmeans`: the pseudo-class step of both methods, for vectors spread over the
  processes of a run: fit on a random subset of them (gathered on the main process), then every
  vector is assigned to its nearest centroid where it lives.
- :func:`match_clusters`: a permutation of new cluster ids onto old ones (greedy on shared
  members), so that a class keeps its id, and its classifier output, when it is re-clustered.

All are pure functions of their inputs and generator (CPU tensors; float32 arithmetic).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm

__all__ = ["kmeans", "distributed_kmeans", "match_clusters"]

# Rows assigned to the centroids per matrix product (bounds the memory of a large table).
_ASSIGN_CHUNK = 1 << 16


def kmeans(features: torch.Tensor, k: int, iters: int, generator: torch.Generator,
           spherical: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means with k-means++ initialisation.

    Stops after ``iters`` Lloyd iterations or when no vector changes cluster. A cluster that
    empties is restarted at the vector farthest from (least similar to) its own centroid.

    Args:
        features: (M, D), M >= k; L2-normalised when ``spherical``.
        k: number of clusters.
        iters: the most Lloyd iterations.
        generator: the only source of randomness (initialisation).
        spherical: cosine similarity and unit-norm centroids; False: Euclidean distance and
            mean centroids.

    Returns:
        (centroids (k, D), unit-norm when ``spherical``; labels (M,) int64).

    Raises:
        ValueError: fewer than k vectors.
    """
    x = features.float()
    m = len(x)
    if m < k:
        raise ValueError(f"k-means needs at least k = {k} boxes, got {m}")
    if spherical:
        def sq_dist(c):  # squared distance on the unit sphere
            return (2 - 2 * x @ c).clamp(min=0)

        def score(c):  # larger is nearer
            return x @ c.t()
    else:
        norms = (x * x).sum(dim=1)

        def sq_dist(c):
            return (norms - 2 * x @ c + c @ c).clamp(min=0)

        def score(c):  # -|x - c|^2 / 2 up to a term of x alone
            return x @ c.t() - 0.5 * (c * c).sum(dim=1)

    first = int(torch.randint(m, (1,), generator=generator))
    centroids = [x[first]]
    dist = sq_dist(x[first])
    for _ in range(1, k):
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[nxt])
        dist = torch.minimum(dist, sq_dist(x[nxt]))
    c = torch.stack(centroids)
    labels = None
    for _ in range(iters):
        sim = score(c)
        new = sim.argmax(dim=1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # restart emptied clusters
            worst = int(sim.gather(1, labels[:, None]).squeeze(1).argmin())
            sums[j], counts[j] = x[worst], 1
            sim[worst, labels[worst]] = float("inf")
        c = F.normalize(sums, dim=1) if spherical else sums / counts[:, None].to(sums.dtype)
    return c, score(c).argmax(dim=1)


def distributed_kmeans(features: torch.Tensor, rows: torch.Tensor, total: int, *, k: int, iters: int,
                       fit_samples: int, generator: torch.Generator, valid: Optional[torch.Tensor] = None,
                       spherical: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means of ``total`` vectors of which this process holds ``features`` (rows ``rows``).

    The fitting subset is the first ``fit_samples`` of a random permutation of all rows (drawn
    from ``generator``, so every process draws the same), less the invalid ones; the main
    process fits :func:`kmeans` on it (the same ``generator`` continues) and every process gets
    the centroids, assigns its own vectors and receives every label. One process: no
    communication.

    Args:
        features: (m, D) this process's vectors (any float dtype; assigned in float32).
        rows: (m,) int64, their row numbers in [0, total).
        valid: (m,) bool, False for vectors that must not be fitted (they get label 0).

    Returns:
        (centroids (k, D), labels (total,) int64), the same on every process.
    """
    if valid is None:
        valid = torch.ones(len(features), dtype=torch.bool)
    fit_rows = torch.randperm(total, generator=generator)[:fit_samples]
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[fit_rows] = True
    local = chosen[rows] & valid
    gathered = comm.all_gather((rows[local], features[local]))
    fit_ids = torch.cat([g[0] for g in gathered])
    fit_feats = torch.cat([g[1] for g in gathered])[torch.argsort(fit_ids)]
    centroids = None
    if comm.is_main_process():
        centroids, _ = kmeans(fit_feats.float(), k, iters, generator, spherical)
    centroids = comm.all_gather(centroids)[0]

    if spherical:
        def nearest(x):
            return (x @ centroids.t()).argmax(dim=1)
    else:
        def nearest(x):
            return (x @ centroids.t() - 0.5 * (centroids * centroids).sum(dim=1)).argmax(dim=1)
    local_labels = torch.cat([nearest(x.float()) for x in features.split(_ASSIGN_CHUNK)]) if len(features) \
        else torch.zeros(0, dtype=torch.int64)
    local_labels[~valid] = 0
    labels = torch.zeros(total, dtype=torch.int64)
    for r, lab in comm.all_gather((rows, local_labels)):
        labels[r] = lab
    return centroids, labels


def match_clusters(new: torch.Tensor, old: torch.Tensor, k: int) -> torch.Tensor:
    """A permutation ``perm`` (k,) so that ``perm[new]`` agrees with ``old`` on as many members
    as the greedy matching finds (largest shared count first; ties by lowest ids).

    Args:
        new, old: (M,) int64 cluster ids in [0, k) of the same M members.
    """
    shared = torch.zeros(k, k, dtype=torch.int64)
    shared.index_put_((new, old), torch.ones_like(new), accumulate=True)
    perm = torch.full((k,), -1, dtype=torch.int64)
    for _ in range(k):
        flat = int(shared.argmax())
        i, j = divmod(flat, k)
        perm[i] = j
        shared[i, :] = -1
        shared[:, j] = -1
    return perm
