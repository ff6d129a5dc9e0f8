"""torch.compile(fullgraph=True) traces nattn with no graph break, forward and backward."""
import pytest
import torch

import nattn


def test_compile_na2d_forward_backward_fullgraph():
    torch._dynamo.reset()

    def fn(q, k, v, ak, av):
        out, lse = nattn.na2d(q, k, v, (3, 5), stride=(1, 2), is_causal=(False, True),
                              scale=0.5, additional_keys=ak, additional_values=av,
                              return_lse=True)
        part = nattn.attention(q[:, 0], k[:, 0], v[:, 0], is_causal=True)
        return (out * out).sum() + lse.sum() + part.sum()

    def inputs():
        torch.manual_seed(1)
        shapes = [(2, 6, 7, 4, 8), (2, 6, 7, 2, 8), (2, 6, 7, 2, 8), (2, 3, 2, 8), (2, 3, 2, 8)]
        return [torch.randn(*s, requires_grad=True) for s in shapes]

    eager_in, comp_in = inputs(), inputs()
    compiled = torch.compile(fn, fullgraph=True)
    eager_loss, comp_loss = fn(*eager_in), compiled(*comp_in)
    eager_loss.backward()
    comp_loss.backward()
    torch.testing.assert_close(comp_loss, eager_loss)
    for a, b in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_module_and_merge_fullgraph():
    torch._dynamo.reset()
    m = nattn.NeighborhoodAttention2D(16, 2, 3)
    x = torch.randn(2, 5, 6, 16, requires_grad=True)

    def fn(x):
        y = m(x)
        q = x.view(2, 5, 6, 2, 8)
        o1, l1 = nattn.na2d(q, q, q, 3, return_lse=True)
        o2, l2 = nattn.na2d(q, q, q, 2, dilation=2, return_lse=True)
        merged, _ = nattn.merge_attentions([o1, o2], [l1, l2])
        return y.sum() + merged.square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), fn(x))
    (gc,) = torch.autograd.grad(compiled(x), x)
    (ge,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(gc, ge)


@pytest.mark.cuda
def test_compile_reduce_overhead_cuda_graphs_forward_backward(cuda_backend):
    """torch.compile(mode="reduce-overhead") (inductor's CUDA graphs, forward and backward)
    keeps working: replayed steps on fresh inputs give the eager call's out and gradients."""
    torch._dynamo.reset()

    def fn(q, k, v):
        return nattn.na2d(q, k, v, 7, dilation=(1, 2))

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # compile, record, then replays
        leaves = [torch.randn(2, 16, 20, 4, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(3)]
        eager = [x.detach().clone().requires_grad_() for x in leaves]
        dout = torch.randn(2, 16, 20, 4, 32, device="cuda", dtype=torch.bfloat16)
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*leaves)
        out.backward(dout)
        want = fn(*eager)
        want.backward(dout)
        assert not out.isnan().any()
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        for a, b in zip(leaves, eager):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
