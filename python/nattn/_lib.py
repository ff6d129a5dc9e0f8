"""Loading libnattn.so with ctypes, the C structs of include/nattn/c_api.h, and error mapping.

This is the only module that knows the C ABI. It holds no kernel logic: it turns torch tensors
into `nattn_tensor` views (pointer, dtype, shape, strides in elements, device) and C status
codes into Python exceptions.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

MAX_DIMS = 6  # NATTN_C_MAX_DIMS

# nattn::DType, nattn::DeviceType, nattn::BackendKind, nattn::StatusCode
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
DEVICES = {"cpu": 0, "cuda": 1}
BACKEND_AUTO, BACKEND_REFERENCE, BACKEND_CUDA = 0, 1, 2
STATUS_OK, STATUS_INVALID, STATUS_UNSUPPORTED, STATUS_RUNTIME = 0, 1, 2, 3

# Forward / backward tensor slots (enum in c_api.h).
FWD_Q, FWD_K, FWD_V, FWD_AK, FWD_AV, FWD_OUT, FWD_LSE, FWD_COUNT = range(8)
(BWD_Q, BWD_K, BWD_V, BWD_AK, BWD_AV, BWD_OUT, BWD_LSE, BWD_DOUT, BWD_DLSE, BWD_DQ, BWD_DK,
 BWD_DV, BWD_DAK, BWD_DAV, BWD_COUNT) = range(15)

_ERR_LEN = 1024


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("stride", ctypes.c_int64 * MAX_DIMS),
        ("device_type", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
    ]


class Problem(ctypes.Structure):
    _fields_ = [
        ("rank", ctypes.c_int32),
        ("is_causal", ctypes.c_int32 * 3),
        ("batch", ctypes.c_int64),
        ("extent", ctypes.c_int64 * 3),
        ("heads_q", ctypes.c_int64),
        ("heads_kv", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("head_dim_v", ctypes.c_int64),
        ("kernel_size", ctypes.c_int64 * 3),
        ("stride", ctypes.c_int64 * 3),
        ("dilation", ctypes.c_int64 * 3),
        ("has_scale", ctypes.c_int32),
        ("scale", ctypes.c_double),
        ("num_additional", ctypes.c_int64),
    ]


class Options(ctypes.Structure):
    _fields_ = [
        ("backend", ctypes.c_int32),
        ("deterministic", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
    ]


def _candidates() -> list[Path]:
    # An explicit NATTN_LIBRARY wins, so a developer can point an installed package (or the
    # source tree on PYTHONPATH) at a freshly built build/libnattn.so.
    paths = []
    env = os.environ.get("NATTN_LIBRARY")
    if env:
        paths.append(Path(env))
    paths.append(Path(__file__).resolve().parent / "libnattn.so")
    return paths


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            return lib
        tried.append(str(path))
    raise ImportError(
        "nattn: cannot find libnattn.so (looked at " + ", ".join(tried) + "). Install the "
        "package with `pip install .`, or build the library (cmake --build build --target "
        "nattn_shared) and set NATTN_LIBRARY=/path/to/build/libnattn.so")


def _declare(lib: ctypes.CDLL) -> None:
    P, T, O = ctypes.POINTER(Problem), ctypes.POINTER(Tensor), ctypes.POINTER(Options)
    err = [ctypes.c_char_p, ctypes.c_size_t]
    for name in ("nattn_forward", "nattn_backward", "nattn_attention_forward",
                 "nattn_attention_backward"):
        fn = getattr(lib, name)
        fn.argtypes = [P, T, O] + err
        fn.restype = ctypes.c_int
    lib.nattn_check_problem.argtypes = [P] + err
    lib.nattn_check_problem.restype = ctypes.c_int
    lib.nattn_merge.argtypes = [ctypes.c_int32, T, T, T, T] + err
    lib.nattn_merge.restype = ctypes.c_int
    lib.nattn_backend_available.argtypes = [ctypes.c_int32] + err
    lib.nattn_backend_available.restype = ctypes.c_int
    lib.nattn_version.argtypes = []
    lib.nattn_version.restype = ctypes.c_char_p


LIB = _load()
LIBRARY_PATH = LIB._name


def version() -> str:
    return LIB.nattn_version().decode()


def raise_for_status(code: int, message: str, where: str) -> None:
    """Maps a C status to the exception the API documents (NotImplementedError is a RuntimeError)."""
    if code == STATUS_OK:
        return
    text = f"{where}: {message}" if message else f"{where}: error code {code}"
    if code == STATUS_INVALID:
        raise ValueError(text)
    if code == STATUS_UNSUPPORTED:
        raise NotImplementedError(text)
    raise RuntimeError(text)


def backend_available(kind: int) -> tuple[bool, str]:
    reason = ctypes.create_string_buffer(_ERR_LEN)
    ok = LIB.nattn_backend_available(kind, reason, _ERR_LEN)
    return bool(ok), reason.value.decode(errors="replace")


def view(x: Optional[torch.Tensor]) -> Tensor:
    """A C view of `x` (absent when None). Strides are passed as they are: no copies."""
    t = Tensor()
    if x is None:
        return t  # ndim 0 = absent
    t.data = x.data_ptr() or None
    t.dtype = DTYPES[x.dtype]
    t.ndim = x.dim()
    for i, (n, s) in enumerate(zip(x.shape, x.stride())):
        t.shape[i] = n
        t.stride[i] = s
    t.device_type = DEVICES[x.device.type]
    t.device_index = x.device.index or 0
    return t


def problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ak: Optional[torch.Tensor],
            kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
            is_causal: Sequence[bool], scale: Optional[float], dense: bool) -> Problem:
    """The problem read off the tensors' shapes ([B, X.., H, D]) plus the window parameters."""
    p = Problem()
    rank = q.dim() - 3
    p.rank = rank
    p.batch = q.shape[0]
    for a in range(rank):
        p.extent[a] = q.shape[1 + a]
        if not dense:
            p.kernel_size[a], p.stride[a], p.dilation[a] = kernel_size[a], stride[a], dilation[a]
        p.is_causal[a] = int(bool(is_causal[a]))
    p.heads_q, p.head_dim = q.shape[-2], q.shape[-1]
    p.heads_kv, p.head_dim_v = k.shape[-2], v.shape[-1]
    if scale is not None:
        p.has_scale, p.scale = 1, float(scale)
    p.num_additional = ak.shape[1] if ak is not None else 0
    return p


def options(backend: int, device: torch.device) -> Options:
    o = Options()
    o.backend = backend
    o.deterministic = int(torch.are_deterministic_algorithms_enabled())
    if device.type == "cuda":
        # Kernels are ordered on torch's current stream, like every torch op.
        o.stream = torch.cuda.current_stream(device).cuda_stream
    return o


def _run(fn, where: str, p: Problem, slots: Sequence[Optional[torch.Tensor]], o: Options) -> None:
    arr = (Tensor * len(slots))(*[view(x) for x in slots])
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = fn(ctypes.byref(p), arr, ctypes.byref(o), err, _ERR_LEN)
    raise_for_status(code, err.value.decode(errors="replace"), where)


def forward(dense: bool, p: Problem, slots: Sequence[Optional[torch.Tensor]], o: Options) -> None:
    assert len(slots) == FWD_COUNT
    if dense:
        _run(LIB.nattn_attention_forward, "nattn.attention", p, slots, o)
    else:
        _run(LIB.nattn_forward, "nattn.na_forward", p, slots, o)


def backward(dense: bool, p: Problem, slots: Sequence[Optional[torch.Tensor]], o: Options) -> None:
    assert len(slots) == BWD_COUNT
    if dense:
        _run(LIB.nattn_attention_backward, "nattn.attention backward", p, slots, o)
    else:
        _run(LIB.nattn_backward, "nattn.na_backward", p, slots, o)
