"""The shared k-means (soco_d2/modeling/kmeans.py): deterministic for a generator seed, spherical
and Euclidean, and the same function label-free Montage and SimDETR cluster with."""
import torch
import torch.nn.functional as F

from soco_d2.modeling.kmeans import kmeans


def test_kmeans_is_a_function_of_its_generator_seed():
    x = F.normalize(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    for spherical in (True, False):
        runs = [kmeans(x, 5, 30, torch.Generator().manual_seed(3), spherical) for _ in range(2)]
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
        other = kmeans(x, 5, 30, torch.Generator().manual_seed(4), spherical)
        assert not torch.equal(runs[0][0], other[0])  # the seed is the only randomness, and it counts


def test_euclidean_kmeans_separates_what_only_the_norm_tells_apart():
    # Two groups with the same direction and different lengths: cosine cannot split them.
    direction = F.normalize(torch.ones(1, 4), dim=1)
    noise = 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    x = torch.cat([direction.repeat(20, 1), 3 * direction.repeat(20, 1)]) + noise
    centroids, labels = kmeans(x, 2, 20, torch.Generator().manual_seed(0), spherical=False)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1
    assert labels[0] != labels[20]
    assert torch.allclose(centroids[labels[0]], x[:20].mean(0)) and torch.allclose(centroids[labels[20]], x[20:].mean(0))


def test_montage_clusters_with_the_shared_kmeans():
    from soco_d2.methods.montage import pseudo_labels

    assert pseudo_labels.kmeans is kmeans
