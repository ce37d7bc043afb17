"""loop_scan (the CPU training scan) against the reference scans."""

import pytest
import torch

from model.scan import loop_scan, sequential_scan


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_loop_scan_equals_sequential_scan_with_initial_state(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    shape = (3, length, 5)
    gates = torch.randn(shape, dtype=torch.complex128, generator=generator) * 0.5
    inputs = torch.randn(shape, dtype=torch.complex128, generator=generator)
    initial = torch.randn(3, 5, dtype=torch.complex128, generator=generator)
    expected = sequential_scan(gates, inputs, initial)
    assert torch.allclose(loop_scan(gates, inputs, initial), expected, atol=1e-12)


def test_loop_scan_gradients_pass_gradcheck_for_complex_and_broadcast_gates() -> None:
    generator = torch.Generator().manual_seed(0)
    decay = (torch.randn(4, dtype=torch.complex128, generator=generator) * 0.4).requires_grad_()
    carry = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]]).double()
    inputs = torch.randn(2, 5, 4, dtype=torch.complex128, generator=generator).requires_grad_()

    def run(decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return loop_scan(decay * carry.unsqueeze(-1), inputs)

    assert torch.autograd.gradcheck(run, (decay, inputs))
