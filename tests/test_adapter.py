"""The Dense Adapter's formula and its fusion variants on known weights."""
import pytest
import torch
import torch.nn.functional as F

from sparse_tuning import DenseAdapter


def _inputs(n, B=2, N=5, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, N, C, generator=g) for _ in range(n)]


def _fill(adapter, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_fresh_adapter_adds_nothing():
    a = DenseAdapter(8, 4, num_inputs=3)
    assert torch.equal(a(_inputs(3)), torch.zeros(2, 5, 8))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_down_sum_formula(n):
    a = DenseAdapter(8, 4, num_inputs=n)
    _fill(a)
    xs = _inputs(n)
    h = sum(xs[i] @ a.down[i].weight.T + a.down[i].bias for i in range(n))
    expected = F.relu(h) @ a.up.weight.T + a.up.bias
    assert torch.allclose(a(xs), expected, atol=1e-5)


def test_input_sum_formula():
    a = DenseAdapter(8, 4, num_inputs=3, fusion="input-sum")
    _fill(a)
    xs = _inputs(3)
    expected = F.relu((xs[0] + xs[1] + xs[2]) @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    assert torch.allclose(a(xs), expected, atol=1e-5)


def test_up_sum_formula():
    a = DenseAdapter(8, 4, num_inputs=2, fusion="up-sum")
    _fill(a)
    xs = _inputs(2)
    expected = sum(F.relu(xs[i] @ a.down[i].weight.T + a.down[i].bias) @ a.up[i].weight.T + a.up[i].bias
                   for i in range(2))
    assert torch.allclose(a(xs), expected, atol=1e-5)


@pytest.mark.parametrize("fusion,params", [
    # d=8, b=4, 3 inputs: down (8*4+4) per input, up (4*8+8) once / shared down / per input
    ("down-sum", 3 * 36 + 40), ("input-sum", 36 + 40), ("up-sum", 3 * (36 + 40)),
])
def test_parameter_counts(fusion, params):
    assert sum(p.numel() for p in DenseAdapter(8, 4, 3, fusion).parameters()) == params


def test_wrong_input_count_is_refused():
    with pytest.raises(ValueError, match="takes 2 inputs"):
        DenseAdapter(8, 4, num_inputs=2)(_inputs(3))


@pytest.mark.parametrize("fusion", ["down-sum", "input-sum", "up-sum"])
def test_factored_form_is_the_same_output(fusion):
    """coeffs @ basis.T is the output; a later adapter fed the factored form computes the same."""
    first, second = DenseAdapter(8, 4, 1, fusion), DenseAdapter(8, 4, 2, fusion)
    _fill(first, seed=1)
    _fill(second, seed=2)
    x0, x1 = _inputs(2)
    factored = first.forward_factored([x0])
    dense = first([x0])
    assert factored.coeffs.shape == (2, 5, 4 + 1) and factored.basis.shape == (8, 4 + 1)
    assert torch.allclose(factored.dense(), dense, atol=1e-5)
    assert torch.equal(factored.coeffs[..., -1], torch.ones(2, 5))  # every token has mass 1
    w, b = torch.randn(3, 8), torch.randn(3)
    assert torch.allclose(factored.project(w, b), F.linear(dense, w, b), atol=1e-4)
    assert torch.allclose(second([x1, factored]), second([x1, dense]), atol=1e-4)
    out = torch.randn(2, 5, 8)
    assert torch.allclose(factored.add_to_(out.clone(), alpha=0.1), out + 0.1 * dense, atol=1e-5)
