"""infoshape.math.linalg.pairwise_sq_distances: hand values, exact zero diagonal, gradients."""

from __future__ import annotations

import torch

from infoshape.math.linalg import pairwise_sq_distances


def test_distances_of_hand_picked_points():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    # |p - q|^2 by hand: (0,0)-(3,4): 25; (0,0)-(1,1): 2; (3,4)-(1,1): 4 + 9 = 13
    expected = torch.tensor([[0, 25, 2], [25, 0, 13], [2, 13, 0]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_sq_distances(x), expected)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    # to (0,1): 1, 9 + 9 = 18, 1
    torch.testing.assert_close(
        pairwise_sq_distances(x, y), torch.tensor([[1.0], [18.0], [1.0]], dtype=torch.float64)
    )


def test_matches_cdist_with_an_exact_zero_diagonal_and_no_negatives():
    g = torch.Generator().manual_seed(0)
    x = 1e3 + torch.randn(200, 16, generator=g, dtype=torch.float64)  # cancellation-prone
    d = pairwise_sq_distances(x)
    torch.testing.assert_close(d, torch.cdist(x, x) ** 2, rtol=1e-9, atol=1e-6)
    assert bool((torch.diagonal(d) == 0).all()) and bool((d >= 0).all())
    flat = torch.randn(5, 2, 3, generator=g)  # trailing dims are flattened
    torch.testing.assert_close(
        pairwise_sq_distances(flat),
        torch.cdist(flat.reshape(5, 6), flat.reshape(5, 6)) ** 2,
        rtol=1e-5,
        atol=1e-5,
    )


def test_gradients_through_the_in_place_updates():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_sq_distances, (x,))
    assert torch.autograd.gradcheck(pairwise_sq_distances, (x, y))
