"""torch.autocast: like scaled_dot_product_attention, nattn casts floating inputs other than
float64 to the autocast dtype, returns that dtype, and sends gradients back in the inputs' own
dtype; outside autocast float32 stays exact float32. CPU here; CUDA when a device is present."""
import pytest
import torch

import nattn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _qkv(device, dtype, shape=(2, 9, 11, 2, 16)):
    return [torch.randn(shape, device=device, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
def test_autocast_casts_like_sdpa(device, target):
    q, k, v = _qkv(device, torch.float32)
    with torch.autocast(device, dtype=target):
        out = nattn.na2d(q, k, v, (3, 5), dilation=(2, 1))
        want = nattn.na2d(q.to(target), k.to(target), v.to(target), (3, 5), dilation=(2, 1))
        sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 3), k.transpose(1, 3),
                                                                v.transpose(1, 3))
    assert out.dtype == target == sdpa.dtype
    torch.testing.assert_close(out, want, rtol=0, atol=0)  # the same computation in the same dtype


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_gradients_reach_float32_inputs(device):
    q, k, v = (x.requires_grad_() for x in _qkv(device, torch.float32))
    with torch.autocast(device, dtype=torch.bfloat16):
        out = nattn.na2d(q, k, v, 3)
    out.float().square().sum().backward()
    for x in (q, k, v):
        assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_float64_and_no_autocast_stay_exact(device):
    q, k, v = _qkv(device, torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert nattn.na1d(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), 5).dtype == torch.float64
    q, k, v = _qkv(device, torch.float32)
    assert nattn.na2d(q, k, v, 3).dtype == torch.float32
    assert nattn.attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_explain_sees_the_autocast_dtype():
    # float32 runs the generic kernels; under autocast the same call plans a fused family.
    q, k, v = _qkv("cuda", torch.float32, (1, 24, 24, 2, 64))
    assert nattn.explain(q, k, v, kernel_size=5).family == "generic"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert nattn.explain(q, k, v, kernel_size=5).family in ("sm80", "sm90")


def test_autocast_under_torch_compile():
    q, k, v = _qkv("cpu", torch.float32, (1, 8, 8, 2, 16))
    f = torch.compile(lambda q, k, v: nattn.na2d(q, k, v, 3), fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(q, k, v).dtype == torch.bfloat16
    assert f(q, k, v).dtype == torch.float32
