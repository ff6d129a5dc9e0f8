"""Every invalid argument raises before any kernel runs, with a message naming the argument,
its value and the rule. TypeError for wrong Python types, ValueError for wrong values,
NotImplementedError (a RuntimeError) for valid calls a backend cannot run.

Value rules are the C library's (one check, nattn_check_*_shapes, run by the ops and by their
fake implementations), so their messages use the library's names: q, k, v, out, additional_k,
additional_v (the tensors), kernel_size[a], stride[a], dilation[a], extent[a] (= query.shape[1 + a]),
heads_q, heads_kv, head_dim, head_dim_v, outs[i] and lses[i] (merge_attentions)."""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

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
                      ["nattn.na1d", "q.ndim = 5", "expected 4 dimensions [batch, X1, heads_q, head_dim]"]),
    "na2d-given-4d": (na2d(query=Q1, key=K1, value=V1), ValueError,
                      ["q.ndim = 4", "expected 5 dimensions [batch, X1, X2, heads_q, head_dim]"]),
    "na3d-given-5d": (lambda: nattn.na3d(Q2, K2, V2, 3), ValueError,
                      ["nattn.na3d", "q.ndim = 5", "expected 6 dimensions"]),
    "key-rank": (na2d(key=K1), ValueError,
                 ["k.ndim = 4", "expected 5 dimensions [batch, X1, X2, heads_kv, head_dim]"]),
    "key-extent": (na2d(key=t(2, 6, 6, 2, 8)), ValueError,
                   ["k.shape = [2, 6, 6, 2, 8]", "expected [2, 6, 7, 2, 8]"]),
    "key-batch": (na2d(key=t(1, 6, 7, 2, 8)), ValueError,
                  ["k.shape = [1, 6, 7, 2, 8]", "expected [2, 6, 7, 2, 8]"]),
    "key-head-dim": (na2d(key=t(2, 6, 7, 2, 4)), ValueError,
                     ["k.shape = [2, 6, 7, 2, 4]", "expected [2, 6, 7, 2, 8]"]),
    "value-heads": (na2d(value=t(2, 6, 7, 1, 6)), ValueError,
                    ["v.shape = [2, 6, 7, 1, 6]", "expected [2, 6, 7, 2, 6]"]),
    "heads-not-divisible": (na2d(key=t(2, 6, 7, 3, 8), value=t(2, 6, 7, 3, 6)), ValueError,
                            ["heads_q = 4", "must be a multiple of heads_kv = 3"]),
    "zero-head-dim": (na2d(query=t(2, 6, 7, 4, 0), key=t(2, 6, 7, 2, 0)), ValueError,
                      ["head_dim = 0", "must be >= 1"]),
    "too-many-dims": (na2d(query=t(1, 1, 2, 6, 7, 4, 8)), ValueError,
                      ["q.ndim = 7", "must be 0..6"]),
    # tensor types, dtypes, devices
    "query-not-tensor": (na2d(query=Q2.tolist()), TypeError, ["query = list", "torch.Tensor"]),
    "value-none": (na2d(value=None), TypeError, ["value = NoneType", "torch.Tensor"]),
    "int-dtype": (na2d(query=Q2.int(), key=K2.int(), value=V2.int()), TypeError,
                  ["query.dtype = torch.int32", "float32"]),
    "dtype-mismatch": (na2d(key=K2.half()), ValueError,
                       ["k.dtype = float16", "must match q.dtype (float32)"]),
    "value-dtype-mismatch": (na2d(value=V2.double()), ValueError,
                             ["v.dtype = float64", "must match q.dtype (float32)"]),
    "meta-device": (na2d(query=Q2.to("meta"), key=K2.to("meta"), value=V2.to("meta")), ValueError,
                    ["query.device = meta", "cpu or cuda"]),
    # window rules (SPEC.md)
    "kernel-too-large": (na2d(kernel_size=7), ValueError,
                         ["kernel_size[0] = 7", "kernel_size * dilation must be <= extent",
                          "dilation[0] = 1", "extent[0] = 6"]),
    "kernel-times-dilation": (na2d(kernel_size=(3, 4), dilation=(2, 2)), ValueError,
                              ["kernel_size[1] = 4", "kernel_size * dilation must be <= extent",
                               "dilation[1] = 2", "extent[1] = 7"]),
    "kernel-one": (na2d(kernel_size=(3, 1)), ValueError, ["kernel_size[1] = 1", "must be >= 2"]),
    "stride-gt-kernel": (na2d(stride=(1, 4)), ValueError,
                         ["stride[1] = 4", "1 <= stride <= kernel_size", "kernel_size[1] = 3"]),
    "stride-zero": (na2d(stride=0), ValueError, ["stride[0] = 0", "1 <= stride <= kernel_size"]),
    "dilation-zero": (na2d(dilation=0), ValueError, ["dilation[0] = 0", "must be >= 1"]),
    "kernel-negative": (na2d(kernel_size=-3), ValueError, ["kernel_size[0] = -3", "must be >= 2"]),
    "kernel-past-64-bits": (na2d(kernel_size=(3, 2**70)), ValueError,
                            ["kernel_size[1] = 1180591620717411303424", "64 bits"]),
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
                              ["additional_v = absent", "required when num_additional = 3"]),
    "additional-values-alone": (na2d(additional_values=t(2, 3, 2, 6)), ValueError,
                                ["additional_k = absent", "required when num_additional = 3"]),
    "additional-keys-shape": (na2d(additional_keys=t(2, 3, 4, 8), additional_values=t(2, 3, 2, 6)),
                              ValueError, ["additional_k.shape = [2, 3, 4, 8]", "expected [2, 3, 2, 8]"]),
    "additional-values-shape": (na2d(additional_keys=t(2, 3, 2, 8),
                                     additional_values=t(2, 4, 2, 6)),
                                ValueError, ["additional_v.shape = [2, 4, 2, 6]",
                                             "expected [2, 3, 2, 6]"]),
    "additional-keys-rank": (na2d(additional_keys=t(2, 3, 8), additional_values=t(2, 3, 2, 6)),
                             ValueError, ["additional_k.ndim = 3", "expected 4 dimensions "
                                          "[batch, num_additional, heads_kv, head_dim]"]),
    "additional-keys-dtype": (na2d(additional_keys=t(2, 3, 2, 8).double(),
                                   additional_values=t(2, 3, 2, 6)),
                              ValueError, ["additional_k.dtype = float64", "must match q.dtype (float32)"]),
    "additional-keys-type": (na2d(additional_keys=[1.0], additional_values=t(2, 3, 2, 6)),
                             TypeError, ["additional_keys = list"]),
    # flags and backend names
    "return-lse-int": (na2d(return_lse=1), TypeError, ["return_lse = 1", "must be a bool"]),
    "backend-unknown": (na2d(backend="gpu"), ValueError, ["backend = 'gpu'", "'reference'"]),
    "backend-not-str": (na2d(backend=1), TypeError, ["backend = 1"]),
    # dense attention
    "attention-rank": (lambda: nattn.attention(Q2, K2, V2), ValueError,
                       ["nattn.attention", "q.ndim = 5",
                        "expected 4 dimensions [batch, seq_len, heads_q, head_dim]"]),
    "attention-causal-tuple": (lambda: nattn.attention(Q1, K1, V1, is_causal=(True,)), TypeError,
                               ["is_causal = (True,)"]),
    # any number of keys (cross-attention), but values must match the keys
    "attention-value-length": (lambda: nattn.attention(Q1, t(2, 9, 2, 8), t(2, 8, 2, 6)),
                               ValueError, ["v.shape = [2, 8, 2, 6]", "expected [2, 9, 2, 6]"]),
    "attention-no-keys": (lambda: nattn.attention(Q1, t(2, 0, 2, 8), t(2, 0, 2, 6)),
                          ValueError, ["k.shape = [2, 0, 2, 8]", "at least one key"]),
    # merge_attentions
    "merge-empty": (lambda: nattn.merge_attentions([], []), ValueError,
                    ["outs = an empty list", "needs at least one partial"]),
    "merge-not-list": (lambda: nattn.merge_attentions(t(2, 3, 4), t(2, 3)), TypeError,
                       ["outputs = Tensor object"]),
    "merge-count": (lambda: nattn.merge_attentions([t(2, 3, 4)] * 2, [t(2, 3)]), ValueError,
                    ["lses = 1 tensors", "needs one per output (2)"]),
    "merge-shape": (lambda: nattn.merge_attentions([t(2, 3, 4), t(2, 3, 5)], [t(2, 3)] * 2),
                    ValueError, ["outs[1].shape = [2, 3, 5]", "expected [2, 3, 4]"]),
    "merge-rank": (lambda: nattn.merge_attentions([t(4)], [t(1)]), ValueError,
                   ["outs[0].ndim = 1", "must be >= 2"]),
    "merge-lse-shape": (lambda: nattn.merge_attentions([t(2, 3, 4)], [t(2, 4)]), ValueError,
                        ["lses[0].shape = [2, 4]", "expected [2, 3]"]),
    "merge-lse-dtype": (lambda: nattn.merge_attentions([t(2, 3, 4)], [t(2, 3).double()]),
                        ValueError, ["lses[0].dtype = float64", "must be float32"]),
    "merge-dtype": (lambda: nattn.merge_attentions([t(2, 3, 4), t(2, 3, 4).half()], [t(2, 3)] * 2),
                    ValueError, ["outs[1].dtype = float16", "must match outs[0].dtype (float32)"]),
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
                                ValueError, ["kernel_size[0] = 7", "<= extent", "extent[0] = 6"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_argument(name):
    call, exc, fragments = CASES[name]
    with pytest.raises(exc) as info:
        call()
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[1] is ValueError])
def test_fake_tensors_fail_the_same_way(name):
    # The ops' fake implementations run the library's check too: tracing (torch.compile,
    # meta/fake tensors) rejects a call with the eager call's exception and message.
    call, exc, _ = CASES[name]
    with pytest.raises(exc) as eager:
        call()
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(exc) as fake:
            call()
    assert str(fake.value) == str(eager.value)


def test_compiled_call_fails_with_the_library_message():
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v: nattn.na2d(q, k, v, (3, 9)), fullgraph=True,
                       backend="eager")
    with pytest.raises(Exception, match=r"kernel_size\[1\] = 9 is invalid: kernel_size \* "
                                        r"dilation must be <= extent \(dilation\[1\] = 1, "
                                        r"extent\[1\] = 7\)"):
        fn(Q2, K2, V2)


# The op checks its arguments whoever calls it; its errors map to Python exceptions by status
# code. Calling the registered op directly skips the Python type checks.
OP = torch.ops.nattn.na_forward.default
AUTO = ([], "", [], [])  # placement (none), family, config_ids, tiles: automatic


def test_library_invalid_argument_is_value_error():
    with pytest.raises(ValueError, match=r"kernel_size\[0\] = 9 is invalid: kernel_size \* "
                                         r"dilation must be <= extent"):
        OP(Q2, K2, V2, None, None, [9, 3], [1, 1], [1, 1], [False, False], None, False, 0, *AUTO)


def test_library_unsupported_is_not_implemented_error():
    with pytest.raises(NotImplementedError, match="backend = cuda") as info:
        OP(Q2, K2, V2, None, None, [3, 3], [1, 1], [1, 1], [False, False], None, False,
           _lib.BACKEND_CUDA, *AUTO)
    assert isinstance(info.value, RuntimeError)


def test_backward_op_checks_its_arguments():
    out, lse = OP(Q2, K2, V2, None, None, [3, 3], [1, 1], [1, 1], [False, False], None, False, 0,
                  *AUTO)
    with pytest.raises(ValueError, match=r"nattn.na2d backward: dout.shape = \[2, 6, 7, 4, 5\] "
                                         r"is invalid: expected \[2, 6, 7, 4, 6\]"):
        torch.ops.nattn.na_backward.default(Q2, K2, V2, None, None, out, lse, out[..., :5], None,
                                            [3, 3], [1, 1], [1, 1], [False, False], None, False,
                                            0, *AUTO)


# (kwargs, exception, fragments, raised by kernel_choice itself (Python types) or by the call)
CHOICE_CASES = {
    "family-unknown": (dict(family="sm99"), ValueError,
                       ['choice.family = "sm99" is invalid', "reference"], "call"),
    "config-on-reference": (dict(config=0), ValueError,
                            ["kernel configuration or tile shape", "reference backend"], "call"),
    "tile-on-reference": (dict(tile=((2, 4), (1, 2))), ValueError, ["reference backend"], "call"),
    "family-type": (dict(family=80), TypeError, ["family = 80", "must be None or a str"], "choice"),
    "config-type": (dict(config="3"), TypeError, ["config = '3'", "ids of nattn.kernel_configs()"],
                    "choice"),
    "config-negative": (dict(config=-1), ValueError, ["config = -1", "not a row id"], "choice"),
    "config-too-many": (dict(config=[0, 1, 2, 3, 4]), ValueError,
                        ["config = [0, 1, 2, 3, 4]", "at most 4"], "choice"),
    "tile-not-pair": (dict(tile=(4, 32)), TypeError, ["tile = (4, 32)", "a pair (own, walk)"],
                      "choice"),
    "tile-zero": (dict(tile=((0, 4), (2, 2))), ValueError, ["tile[0] (own)[0] = 0", ">= 1"],
                  "choice"),
    "tile-float": (dict(tile=((2.0, 4), (2, 2))), TypeError,
                   ["tile[0] (own)[0] = 2.0", "must be an int"], "choice"),
    "tile-length": (dict(tile=((1, 2, 4, 8), (2, 2))), TypeError,
                    ["tile[0] (own) = (1, 2, 4, 8)", "1 to 3 ints"], "choice"),
    "tile-walk": (dict(tile=((2, 4), (1, 0))), ValueError, ["tile[1] (walk)[1] = 0"], "choice"),
}


def _raises(exc, fragments, fn):
    with pytest.raises(exc) as info:
        fn()
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("name", list(CHOICE_CASES))
def test_invalid_kernel_choice(name):
    kwargs, exc, fragments, at = CHOICE_CASES[name]
    if at == "choice":
        _raises(exc, fragments, lambda: nattn.kernel_choice(**kwargs).__enter__())
    else:
        def call():
            with nattn.kernel_choice(**kwargs):
                nattn.na2d(Q2, K2, V2, 3)
        _raises(exc, fragments, call)
    # explain takes the same arguments and fails the same way.
    _raises(exc, fragments, lambda: nattn.explain(Q2, K2, V2, 3, **kwargs))
    assert nattn.explain(Q2, K2, V2, 3).family == "reference"  # nothing left in force


def test_explain_argument_errors():
    with pytest.raises(TypeError, match="kernel_size = None is invalid: needed unless dense=True"):
        nattn.explain(Q2, K2, V2)
    with pytest.raises(TypeError, match="kernel_size = 3 is invalid: must be None with dense=True"):
        nattn.explain(Q1, K1, V1, 3, dense=True)
    with pytest.raises(ValueError, match=r"query.shape = \[2, 8\] is invalid: explain reads the rank"):
        nattn.explain(t(2, 8), t(2, 8), t(2, 8), 3)
    with pytest.raises(TypeError, match="grad_out = list object"):
        nattn.explain(Q2, K2, V2, 3, backward=True, grad_out=[1.0])
    with pytest.raises(ValueError, match=r"nattn.na2d backward: dout.shape = \[2, 6, 7, 4, 8\]"):
        nattn.explain(Q2, K2, V2, 3, backward=True, grad_out=t(2, 6, 7, 4, 8))
    with pytest.raises(ValueError, match=r"nattn.na2d: kernel_size\[0\] = 7 is invalid"):
        nattn.explain(Q2, K2, V2, 7)


def test_status_mapping():
    _lib.raise_for_status(_lib.STATUS_OK, "", "x")
    for code, exc in ((1, ValueError), (2, NotImplementedError), (3, RuntimeError), (7, RuntimeError)):
        with pytest.raises(exc, match="where: message"):
            _lib.raise_for_status(code, "message", "where")
