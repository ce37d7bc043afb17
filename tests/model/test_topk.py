"""Chunked exact top-k equals top-k over the full score matrix, with and without exclusions."""

import pytest
import torch

from model.inference.topk import block_top_k, chunked_top_k

N_ITEMS = 3_000


def full_top_k(
    hidden: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    exclude: list[list[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unchunked reference: every score at once, padding and excluded items at -inf."""
    scores = hidden @ table.T + (0 if bias is None else bias)
    scores[:, 0] = -torch.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -torch.inf
    values, indices = torch.topk(scores, min(k, table.shape[0] - 1), dim=1)
    return values, indices


@pytest.fixture
def tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 16, generator=generator)
    table = torch.randn(N_ITEMS + 1, 16, generator=generator)
    bias = torch.randn(N_ITEMS + 1, generator=generator)
    return hidden, table, bias


@pytest.mark.parametrize("chunk_size", [11, 64, 999, N_ITEMS, 100_000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_top_k_equals_full_top_k(
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chunk_size: int, with_bias: bool
) -> None:
    hidden, table, bias = tables
    exclude = [list(range(row, N_ITEMS, 97)) for row in range(64)]
    exclude[3] = []
    for k in (1, 10, 100):
        expected = full_top_k(hidden, table, bias if with_bias else None, k, exclude)
        values, indices = chunked_top_k(
            hidden, table, bias if with_bias else None, k, chunk_size=chunk_size, exclude=exclude
        )
        assert torch.equal(indices, expected[1])
        torch.testing.assert_close(values, expected[0], rtol=1e-6, atol=1e-5)
        assert not torch.isin(indices, torch.tensor([0])).any()


def test_exhausted_catalogue_pads_with_minus_infinity() -> None:
    hidden, table = torch.ones(2, 4), torch.randn(6, 4)
    values, indices = chunked_top_k(hidden, table, None, 10, chunk_size=2, exclude=[[1, 2, 3], []])
    assert values.shape == (2, 5)
    assert torch.isfinite(values[0]).sum() == 2
    assert set(indices[0, :2].tolist()) == {4, 5}
    assert set(indices[1].tolist()) == {1, 2, 3, 4, 5}


def test_bad_arguments_are_rejected(
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    hidden, table, bias = tables
    with pytest.raises(ValueError, match="k and chunk_size"):
        chunked_top_k(hidden, table, bias, 0)
    with pytest.raises(ValueError, match="rows"):
        chunked_top_k(hidden, table, bias, 5, exclude=[[1]])


@pytest.mark.parametrize("n", [16_384, 100_003, 1_000_001])
def test_block_top_k_equals_torch_top_k(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    scores = torch.randn(3, n, generator=generator)
    scores[:, ::3] = -torch.inf  # masked items
    scores[1, -5:] = 100.0 + torch.arange(5.0)  # the best items in the partial last block
    for k in (1, 10, 100):
        values, indices = block_top_k(scores, k)
        expected = torch.topk(scores, k, dim=1)
        assert torch.equal(values, expected.values)
        assert torch.equal(indices, expected.indices)


def test_chunked_top_k_over_a_large_catalogue_equals_full_top_k() -> None:
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(4, 8, generator=generator)
    table = torch.randn(200_001, 8, generator=generator)
    bias = torch.randn(200_001, generator=generator)
    exclude = [[5, 6], [], list(range(1, 200_001, 2)), [199_999]]
    expected = full_top_k(hidden, table, bias, 10, exclude)
    values, indices = chunked_top_k(hidden, table, bias, 10, exclude=exclude)
    assert torch.equal(indices, expected[1])
    torch.testing.assert_close(values, expected[0], rtol=1e-6, atol=1e-5)
