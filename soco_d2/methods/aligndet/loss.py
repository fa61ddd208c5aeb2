"""AlignDet's contrastive loss (ALIGNDET_SPEC.md, Losses): InfoNCE between the online view-1
embeddings and the target view-2 embeddings of the same pseudo-box instance.

Shape shorthand:
    Q  queries: online view-1 embeddings (foreground RoIs / positive anchors, all images)
    K  keys: target view-2 embeddings (same)
    E  extra negatives (RetinaNet: sampled background anchors of both views)
    D  embedding dimension (MODEL.ALIGNDET.EMBED_DIM)
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["info_nce"]


def info_nce(
    queries: torch.Tensor,
    query_ids: torch.Tensor,
    keys: torch.Tensor,
    key_ids: torch.Tensor,
    temperature: float,
    extra_negatives: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """
    For every instance id k of the queries, with L2-normalised embeddings:

    - Q_k: the queries with id k; K_k: the keys with id k (Q_k itself, no gradient, if none);
    - N_k: every query and key with another id, and every extra negative (no gradient);
    - L_k = mean over (q in Q_k, k+ in K_k) of
      ``-log(exp(q.k+/t) / (exp(q.k+/t) + sum_{n in N_k} exp(q.n/t)))``;

    and the loss is the mean of L_k over the ids. The loss is not symmetrised.

    Args:
        queries: (Q, D) online embeddings (gradient flows into them only).
        query_ids: (Q,) int64 instance ids, unique within the batch.
        keys: (K, D) target embeddings.
        key_ids: (K,) int64 instance ids.
        temperature: t.
        extra_negatives: (E, D) or None, negatives for every query.

    Returns:
        ``(loss, stats)``: a scalar (0 with a gradient path when there is no query), and
        detached monitors: ``accuracy`` (fraction of queries whose most similar candidate is
        one of their positives), ``pos_sim`` / ``neg_sim`` (mean cosine of positive pairs and
        of query-negative pairs) and ``num_ids`` (ids with a query).
    """
    if queries.shape[0] == 0:
        zero = queries.sum() * 0.0
        return zero, {"accuracy": zero.detach(), "pos_sim": zero.detach(),
                      "neg_sim": zero.detach(), "num_ids": zero.detach()}
    # float32 so that the normalisation and exp are safe under mixed precision.
    q = F.normalize(queries.float(), dim=1)
    k = F.normalize(keys.detach().float(), dim=1)
    q_const = q.detach()
    candidates = [q_const, k]
    candidate_ids = [query_ids, key_ids]
    if extra_negatives is not None and len(extra_negatives):
        candidates.append(F.normalize(extra_negatives.detach().float(), dim=1))
        candidate_ids.append(query_ids.new_full((len(extra_negatives),), -1))
    pool = torch.cat(candidates)
    num_q = q.shape[0]
    sims = q @ pool.t() / temperature  # (Q, Q + K + E)
    same = query_ids[:, None] == torch.cat(candidate_ids)[None, :]
    same[:, num_q + len(k):] = False  # extra negatives match no query

    # Positives: keys with the query's id; queries (Q_k) where the id has no key.
    has_key = (query_ids[:, None] == key_ids[None, :]).any(dim=1)
    positive = torch.zeros_like(same)
    positive[:, num_q:num_q + len(k)] = same[:, num_q:num_q + len(k)]
    positive[:, :num_q] = same[:, :num_q] & ~has_key[:, None]
    negative = ~same

    neg_lse = torch.logsumexp(sims.masked_fill(~negative, float("-inf")), dim=1)  # (Q,)
    # -log(e^s / (e^s + e^neg)) = logaddexp(s, neg) - s, for every (query, positive) pair.
    pair_loss = torch.logaddexp(sims, neg_lse[:, None]) - sims
    per_query_sum = (pair_loss * positive).sum(dim=1)
    per_query_count = positive.sum(dim=1).to(sims.dtype)

    ids, group = torch.unique(query_ids, return_inverse=True)
    loss_sum = sims.new_zeros(len(ids)).index_add_(0, group, per_query_sum)
    count = sims.new_zeros(len(ids)).index_add_(0, group, per_query_count)
    loss = (loss_sum / count).mean()

    with torch.no_grad():
        cos = sims * temperature
        best_pos = cos.masked_fill(~positive, float("-inf")).max(dim=1).values
        best_neg = cos.masked_fill(~negative, float("-inf")).max(dim=1).values
        stats = {
            "accuracy": (best_pos > best_neg).float().mean(),
            "pos_sim": (cos * positive).sum() / positive.sum(),
            "neg_sim": (cos * negative).sum() / negative.sum().clamp(min=1),
            "num_ids": torch.tensor(float(len(ids))),
        }
    return loss, stats
