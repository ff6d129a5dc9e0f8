"""Backend listing, selection by name, and refusal with the library's reason."""
import pytest
import torch

import nattn


def qkv():
    return (torch.randn(1, 6, 5, 2, 8), torch.randn(1, 6, 5, 2, 8), torch.randn(1, 6, 5, 2, 8))


def test_backends_lists_every_backend_with_reasons():
    infos = {b.name: b for b in nattn.backends()}
    assert set(infos) == {"reference", "cuda"}
    assert infos["reference"].available and infos["reference"].reason == ""
    for b in infos.values():
        assert isinstance(b, nattn.BackendInfo)
        assert b.available or b.reason  # unavailable backends say why


@pytest.mark.parametrize("name", [None, "auto", "reference", "cpu", "CPU", "Reference"])
def test_cpu_names_pick_the_reference_backend(name):
    q, k, v = qkv()
    torch.testing.assert_close(nattn.na2d(q, k, v, 3, backend=name),
                               nattn.na2d(q, k, v, 3, backend="reference"), atol=0, rtol=0)


def test_backend_applies_to_backward_and_attention():
    q, k, v = (x.requires_grad_() for x in qkv())
    nattn.na2d(q, k, v, 3, backend="cpu").sum().backward()
    assert q.grad is not None
    nattn.attention(q[:, 0], k[:, 0], v[:, 0], backend="reference")


def test_cuda_refused_with_reason_on_cpu_tensors():
    q, k, v = qkv()
    cuda = {b.name: b for b in nattn.backends()}["cuda"]
    with pytest.raises(RuntimeError) as info:  # NotImplementedError is a RuntimeError
        nattn.na2d(q, k, v, 3, backend="cuda")
    msg = str(info.value)
    assert "backend = 'cuda'" in msg or "backend = cuda" in msg
    if not cuda.available:
        assert isinstance(info.value, NotImplementedError) and cuda.reason in msg
    else:  # built with CUDA: refused because these are CPU tensors
        assert "cpu" in msg.lower()
