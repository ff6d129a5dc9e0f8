"""Every invalid argument raises before any kernel runs, with a message naming the argument,
its value and the rule. TypeError for wrong Python types, ValueError for wrong values,
NotImplementedError (a RuntimeError) for valid calls a backend cannot run."""
import math

import pytest
import torch

import nattn
from nattn import _lib


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q1, K1, V1 = t(2, 10, 4, 8), t(2, 10, 2, 8), t(2, 10, 2, 6)
Q2, K2, V2 = t(2, 6, 7, 4, 8), t(2, 6, 7, 2, 8), t(2, 6, 7, 2, 6)


def na2d(**kw):
    args = dict(query=Q2, key=K2, value=V2, kernel_size=3)
    args.update(kw)
    return lambda: nattn.na2d(**args)


def na1d(**kw):
    args = dict(query=Q1, key=K1, value=V1, kernel_size=3)
    args.update(kw)
    return lambda: nattn.na1d(**args)


CASES = {
    # shapes and ranks
    "na1d-given-5d": (na1d(query=Q2, key=K2, value=V2), ValueError,
                      ["query.shape = [2, 6, 7, 4, 8]", "na1d expects", "4 dims"]),
    "na2d-given-4d": (na2d(query=Q1, key=K1, value=V1), ValueError, ["query.shape", "5 dims"]),
    "na3d-given-5d": (lambda: nattn.na3d(Q2, K2, V2, 3), ValueError, ["na3d expects", "6 dims"]),
    "key-rank": (na2d(key=K1), ValueError, ["key.shape", "5 dims"]),
    "key-extent": (na2d(key=t(2, 6, 6, 2, 8)), ValueError, ["key.shape = [2, 6, 6, 2, 8]"]),
    "key-batch": (na2d(key=t(1, 6, 7, 2, 8)), ValueError, ["key.shape"]),
    "key-head-dim": (na2d(key=t(2, 6, 7, 2, 4)), ValueError, ["key.shape", "head_dim"]),
    "value-heads": (na2d(value=t(2, 6, 7, 1, 6)), ValueError, ["value.shape", "heads_kv"]),
    "heads-not-divisible": (na2d(key=t(2, 6, 7, 3, 8), value=t(2, 6, 7, 3, 6)), ValueError,
                            ["query.shape[-2] = 4", "multiple of key.shape[-2] = 3"]),
    # tensor types, dtypes, devices
    "query-not-tensor": (na2d(query=Q2.tolist()), TypeError, ["query = list", "torch.Tensor"]),
    "value-none": (na2d(value=None), TypeError, ["value = NoneType", "torch.Tensor"]),
    "int-dtype": (na2d(query=Q2.int(), key=K2.int(), value=V2.int()), TypeError,
                  ["query.dtype = torch.int32", "float32"]),
    "dtype-mismatch": (na2d(key=K2.half()), ValueError,
                       ["key.dtype = torch.float16", "must match query.dtype (torch.float32)"]),
    "value-dtype-mismatch": (na2d(value=V2.double()), ValueError, ["value.dtype = torch.float64"]),
    "meta-device": (na2d(query=Q2.to("meta"), key=K2.to("meta"), value=V2.to("meta")), ValueError,
                    ["query.device = meta", "cpu or cuda"]),
    # window rules (SPEC.md)
    "kernel-too-large": (na2d(kernel_size=7), ValueError,
                         ["kernel_size = 7", "kernel_size[0] * dilation[0] = 7 * 1 = 7",
                          "query.shape[1] = 6"]),
    "kernel-times-dilation": (na2d(kernel_size=(3, 4), dilation=(2, 2)), ValueError,
                              ["kernel_size = (3, 4)", "kernel_size[1] * dilation[1] = 4 * 2 = 8",
                               "query.shape[2] = 7"]),
    "kernel-one": (na2d(kernel_size=(3, 1)), ValueError, ["kernel_size[1] = 1", ">= 2"]),
    "stride-gt-kernel": (na2d(stride=(1, 4)), ValueError,
                         ["stride = (1, 4)", "stride[1] = 4", "1 <= stride <= kernel_size"]),
    "stride-zero": (na2d(stride=0), ValueError, ["stride[0] = 0"]),
    "dilation-zero": (na2d(dilation=0), ValueError, ["dilation[0] = 0", ">= 1"]),
    "kernel-negative": (na2d(kernel_size=-3), ValueError, ["kernel_size[0] = -3"]),
    # per-axis tuples and bool/int confusion
    "kernel-tuple-length": (na2d(kernel_size=(3, 3, 3)), ValueError,
                            ["kernel_size = (3, 3, 3)", "one value per spatial axis (2), got 3"]),
    "stride-list-length": (na2d(stride=[1]), ValueError, ["stride = [1]", "got 1"]),
    "causal-tuple-length": (na2d(is_causal=(True,)), ValueError, ["is_causal = (True,)"]),
    "kernel-bool": (na2d(kernel_size=True), TypeError, ["kernel_size = True", "not bool"]),
    "kernel-float": (na2d(kernel_size=3.0), TypeError, ["kernel_size = 3.0", "not float"]),
    "kernel-str": (na2d(kernel_size="3"), TypeError, ["kernel_size = '3'"]),
    "kernel-item-bool": (na2d(kernel_size=(3, True)), TypeError, ["kernel_size[1] = True"]),
    "dilation-bool": (na2d(dilation=False), TypeError, ["dilation = False"]),
    "causal-int": (na2d(is_causal=1), TypeError, ["is_causal = 1", "must be a bool"]),
    "causal-item-int": (na2d(is_causal=(True, 0)), TypeError, ["is_causal[1] = 0"]),
    # scale
    "scale-str": (na2d(scale="0.5"), TypeError, ["scale = '0.5'"]),
    "scale-bool": (na2d(scale=True), TypeError, ["scale = True"]),
    "scale-nan": (na2d(scale=math.nan), ValueError, ["scale = nan", "finite"]),
    "scale-inf": (na2d(scale=math.inf), ValueError, ["scale = inf", "finite"]),
    # additional keys / values
    "additional-keys-alone": (na2d(additional_keys=t(2, 3, 2, 8)), ValueError,
                              ["additional_values = None", "together"]),
    "additional-values-alone": (na2d(additional_values=t(2, 3, 2, 6)), ValueError,
                                ["additional_keys = None"]),
    "additional-keys-shape": (na2d(additional_keys=t(2, 3, 4, 8), additional_values=t(2, 3, 2, 6)),
                              ValueError, ["additional_keys.shape = [2, 3, 4, 8]", "[2, Na, 2, 8]"]),
    "additional-values-shape": (na2d(additional_keys=t(2, 3, 2, 8),
                                     additional_values=t(2, 4, 2, 6)),
                                ValueError, ["additional_values.shape = [2, 4, 2, 6]"]),
    "additional-keys-dtype": (na2d(additional_keys=t(2, 3, 2, 8).double(),
                                   additional_values=t(2, 3, 2, 6)),
                              ValueError, ["additional_keys.dtype = torch.float64"]),
    "additional-keys-type": (na2d(additional_keys=[1.0], additional_values=t(2, 3, 2, 6)),
                             TypeError, ["additional_keys = list"]),
    # flags and backend names
    "return-lse-int": (na2d(return_lse=1), TypeError, ["return_lse = 1", "must be a bool"]),
    "backend-unknown": (na2d(backend="gpu"), ValueError, ["backend = 'gpu'", "'reference'"]),
    "backend-not-str": (na2d(backend=1), TypeError, ["backend = 1"]),
    # dense attention
    "attention-rank": (lambda: nattn.attention(Q2, K2, V2), ValueError,
                       ["query.shape", "attention expects [batch, N, heads, head_dim]"]),
    "attention-causal-tuple": (lambda: nattn.attention(Q1, K1, V1, is_causal=(True,)), TypeError,
                               ["is_causal = (True,)"]),
    "attention-key-length": (lambda: nattn.attention(Q1, t(2, 9, 2, 8), t(2, 9, 2, 6)),
                             ValueError, ["key.shape = [2, 9, 2, 8]"]),
    # merge_attentions
    "merge-empty": (lambda: nattn.merge_attentions([], []), ValueError, ["outputs = []"]),
    "merge-not-list": (lambda: nattn.merge_attentions(t(2, 3, 4), t(2, 3)), TypeError,
                       ["outputs = Tensor object"]),
    "merge-count": (lambda: nattn.merge_attentions([t(2, 3, 4)] * 2, [t(2, 3)]), ValueError,
                    ["lses has 1 tensors", "one per output (2)"]),
    "merge-shape": (lambda: nattn.merge_attentions([t(2, 3, 4), t(2, 3, 5)], [t(2, 3)] * 2),
                    ValueError, ["outputs[1].shape = [2, 3, 5]"]),
    "merge-lse-shape": (lambda: nattn.merge_attentions([t(2, 3, 4)], [t(2, 4)]), ValueError,
                        ["lses[0].shape = [2, 4]", "[2, 3]"]),
    "merge-lse-dtype": (lambda: nattn.merge_attentions([t(2, 3, 4)], [t(2, 3).double()]),
                        ValueError, ["lses[0].dtype = torch.float64", "float32"]),
    "merge-dtype": (lambda: nattn.merge_attentions([t(2, 3, 4), t(2, 3, 4).half()], [t(2, 3)] * 2),
                    ValueError, ["outputs[1].dtype = torch.float16"]),
    "merge-item-type": (lambda: nattn.merge_attentions([t(2, 3, 4), None], [t(2, 3)] * 2),
                        TypeError, ["outputs[1] = NoneType"]),
    # modules
    "module-heads": (lambda: nattn.NeighborhoodAttention2D(30, 4, 3), ValueError,
                     ["embed_dim = 30", "num_heads = 4"]),
    "module-heads-type": (lambda: nattn.NeighborhoodAttention1D(32, 4.0, 3), TypeError,
                          ["num_heads = 4.0"]),
    "module-kernel-length": (lambda: nattn.NeighborhoodAttention3D(32, 4, (3, 3)), ValueError,
                             ["kernel_size = (3, 3)", "(3)"]),
    "module-input-shape": (lambda: nattn.NeighborhoodAttention2D(32, 4, 3)(t(2, 6, 32)),
                           ValueError, ["x.shape = [2, 6, 32]", "embed_dim = 32"]),
    "module-input-channels": (lambda: nattn.NeighborhoodAttention1D(32, 4, 3)(t(2, 6, 16)),
                              ValueError, ["x.shape = [2, 6, 16]"]),
    "module-kernel-too-large": (lambda: nattn.NeighborhoodAttention1D(32, 4, 7)(t(2, 6, 32)),
                                ValueError, ["kernel_size = 7", "query.shape[1] = 6"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_argument(name):
    call, exc, fragments = CASES[name]
    with pytest.raises(exc) as info:
        call()
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


# The C library checks everything again; its errors map to Python exceptions by status code.
# Calling the registered op directly skips the Python checks.
OP = torch.ops.nattn.na_forward.default


def test_library_invalid_argument_is_value_error():
    with pytest.raises(ValueError, match=r"kernel_size\[0\] = 9 is invalid: kernel_size \* "
                                         r"dilation must be <= extent"):
        OP(Q2, K2, V2, None, None, [9, 3], [1, 1], [1, 1], [False, False], None, False, 0)


def test_library_unsupported_is_not_implemented_error():
    with pytest.raises(NotImplementedError, match="backend = cuda") as info:
        OP(Q2, K2, V2, None, None, [3, 3], [1, 1], [1, 1], [False, False], None, False,
           _lib.BACKEND_CUDA)
    assert isinstance(info.value, RuntimeError)


def test_status_mapping():
    _lib.raise_for_status(_lib.STATUS_OK, "", "x")
    for code, exc in ((1, ValueError), (2, NotImplementedError), (3, RuntimeError), (7, RuntimeError)):
        with pytest.raises(exc, match="where: message"):
            _lib.raise_for_status(code, "message", "where")
