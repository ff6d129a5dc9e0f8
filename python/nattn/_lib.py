"""Loading libnattn.so with ctypes, the C structs of include/nattn/c_api.h, and error mapping.

This is the only module that knows the C ABI. It holds no kernel logic: it turns torch tensors
into `nattn_tensor` views (pointer, dtype, shape, strides in elements, device) and C status
codes into Python exceptions. At load time the ctypes mirrors of the C structs are compared with
the library's own layout (nattn_struct_layout), so a stale mirror fails the import instead of
passing garbage.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Type

import torch

MAX_DIMS = 6  # NATTN_C_MAX_DIMS
MAX_CONFIG_IDS = 4  # NATTN_C_MAX_CONFIG_IDS

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

# nattn_options' workspace callbacks: void* (*)(size_t bytes, void* ctx), void (*)(void*, void*).
WorkspaceAllocate = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
WorkspaceRelease = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


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
        ("global_extent", ctypes.c_int64 * 3),
        ("query_origin", ctypes.c_int64 * 3),
        ("key_origin", ctypes.c_int64 * 3),
        ("key_extent", ctypes.c_int64 * 3),
    ]


class Options(ctypes.Structure):
    _fields_ = [
        ("backend", ctypes.c_int32),
        ("deterministic", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
        ("family", ctypes.c_char_p),
        ("config_ids", ctypes.c_int32 * MAX_CONFIG_IDS),
        ("own_tile", ctypes.c_int32 * 3),
        ("walk_tile", ctypes.c_int32 * 3),
        ("workspace_allocate", WorkspaceAllocate),
        ("workspace_release", WorkspaceRelease),
        ("workspace_ctx", ctypes.c_void_p),
    ]


# The C struct each ctypes class mirrors.
MIRRORS: Dict[str, Type[ctypes.Structure]] = {
    "nattn_tensor": Tensor, "nattn_problem": Problem, "nattn_options": Options}


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
            check_layouts(lib, MIRRORS)
            return lib
        tried.append(str(path))
    raise ImportError(
        "nattn: cannot find libnattn.so (looked at " + ", ".join(tried) + "). Install the "
        "package with `pip install .`, or build the library (cmake --build build --target "
        "nattn_shared) and set NATTN_LIBRARY=/path/to/build/libnattn.so")


def _declare(lib: ctypes.CDLL) -> None:
    P, T, Opt = ctypes.POINTER(Problem), ctypes.POINTER(Tensor), ctypes.POINTER(Options)
    i32, i64p, size, text = ctypes.c_int32, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t, ctypes.c_char_p
    err = [text, size]
    signatures = {
        "nattn_forward": [P, T, Opt] + err,
        "nattn_backward": [P, T, Opt] + err,
        "nattn_attention_forward": [P, T, Opt] + err,
        "nattn_attention_backward": [P, T, Opt] + err,
        "nattn_explain_forward": [P, T, Opt, text, size] + err,
        "nattn_explain_backward": [P, T, Opt, text, size] + err,
        "nattn_explain_attention_forward": [P, T, Opt, text, size] + err,
        "nattn_explain_attention_backward": [P, T, Opt, text, size] + err,
        "nattn_kernel_configs": [text, size] + err,
        "nattn_check_problem": [P] + err,
        "nattn_check_forward_shapes": [P, T, i32] + err,
        "nattn_check_backward_shapes": [P, T, i32] + err,
        "nattn_check_merge_shapes": [i32, T, T, T, T] + err,
        "nattn_merge": [i32, T, T, T, T] + err,
        "nattn_merge_on_stream": [i32, T, T, T, T, Opt] + err,
        "nattn_struct_layout": [text, i64p, ctypes.POINTER(i32), i64p, i64p, i32, text, size] + err,
        "nattn_backend_available": [i32] + err,
        "nattn_host_trace": [i32, text, size] + err,
    }
    for name, argtypes in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise ImportError(f"nattn: {lib._name} has no function {name}: the library is older "
                              "than this Python package; rebuild it") from None
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    lib.nattn_version.argtypes = []
    lib.nattn_version.restype = ctypes.c_char_p


def check_layouts(lib: ctypes.CDLL, mirrors: Dict[str, Type[ctypes.Structure]]) -> None:
    """Compares each ctypes mirror with the library's struct (field names in order, offsets,
    sizes, sizeof); raises ImportError naming the struct and the first field that differs."""
    for cname, mirror in mirrors.items():
        size, count = ctypes.c_int64(), ctypes.c_int32()
        offsets, sizes = (ctypes.c_int64 * 64)(), (ctypes.c_int64 * 64)()
        names, err = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(_ERR_LEN)
        code = lib.nattn_struct_layout(cname.encode(), ctypes.byref(size), ctypes.byref(count),
                                       offsets, sizes, 64, names, 4096, err, _ERR_LEN)
        if code != STATUS_OK:
            raise ImportError(f"nattn: {lib._name}: nattn_struct_layout({cname}) failed: "
                              f"{err.value.decode(errors='replace')}")
        c_fields = names.value.decode().split(",")
        py_fields = [f[0] for f in mirror._fields_]
        where = (f"nattn: struct {cname} of {lib._name} and its ctypes mirror "
                 f"nattn._lib.{mirror.__name__} differ")
        fix = "(python/nattn/_lib.py must match include/nattn/c_api.h; rebuild or update both)"
        for i in range(max(len(c_fields), len(py_fields))):
            c = c_fields[i] if i < len(c_fields) else None
            py = py_fields[i] if i < len(py_fields) else None
            if c != py:
                raise ImportError(f"{where}: field {i} is {c!r} in the library and {py!r} in "
                                  f"Python {fix}")
            desc = getattr(mirror, py)
            if (desc.offset, desc.size) != (offsets[i], sizes[i]):
                raise ImportError(f"{where}: field {py!r} has offset {offsets[i]}, size "
                                  f"{sizes[i]} in the library and offset {desc.offset}, size "
                                  f"{desc.size} in Python {fix}")
        if ctypes.sizeof(mirror) != size.value:
            raise ImportError(f"{where}: sizeof is {size.value} in the library and "
                              f"{ctypes.sizeof(mirror)} in Python {fix}")


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


def host_trace(action: str) -> Optional[Dict[str, Tuple[int, int]]]:
    """Host-time tracing of the library's calls (nattn/host_trace.h): "on" (counts reset), "off",
    or "read": {phase: (calls, nanoseconds)} summed over the calls since "on", phases in call
    order. A diagnostic for call overhead (bench/host_breakdown.py --trace)."""
    actions = {"off": 0, "on": 1, "read": 2}
    if action not in actions:
        raise ValueError(f"action = {action!r} is invalid: must be one of {', '.join(actions)}")
    if action != "read":
        _call(LIB.nattn_host_trace, "nattn host_trace", actions[action], None, 0)
        return None
    counts = _json(LIB.nattn_host_trace, "nattn host_trace", 2, size=4096)
    return {k: (int(v["calls"]), int(v["ns"])) for k, v in counts.items()}


class Symbolic(Exception):
    """A size that has no concrete value while tracing (an unbacked SymInt): shape checks on
    fake tensors skip such calls, and the real op checks the real sizes."""


def concrete(n) -> int:
    """An int for a size: itself, or a traced SymInt's hint, read without adding a guard (the
    checks of a fake implementation must not specialize dynamic shapes)."""
    if isinstance(n, int):
        return n
    hint = getattr(getattr(n, "node", None), "hint", None)
    if hint is None:
        raise Symbolic(repr(n))
    return int(hint)


def _describe(t: Tensor, shape, strides, dtype: torch.dtype, device: torch.device) -> None:
    t.dtype = DTYPES[dtype]
    n = len(shape)
    t.ndim = n  # more than MAX_DIMS: the library refuses it, naming the slot
    m = min(n, MAX_DIMS)
    try:
        t.shape[:m] = shape[:m]
        t.stride[:m] = strides[:m]
    except TypeError:  # traced sizes (SymInts)
        t.shape[:m] = [concrete(x) for x in shape[:m]]
        t.stride[:m] = [concrete(x) for x in strides[:m]]
    t.device_type = DEVICES[device.type]
    t.device_index = device.index or 0


def view(x: Optional[torch.Tensor], data: bool = True) -> Tensor:
    """A C view of `x` (absent when None). Strides are passed as they are: no copies. With
    data=False the pointer is left null (fake tensors have no memory; shape checks need none)."""
    t = Tensor()
    if x is None:
        return t  # ndim 0 = absent
    if data:
        t.data = x.data_ptr() or None
    _describe(t, x.shape, x.stride(), x.dtype, x.device)
    return t


def contiguous_strides(shape: Sequence[int]) -> list:
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= max(n, 1)
    return strides[::-1]


def planned(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A C view of a contiguous tensor not allocated yet (no data): the op's outputs, checked
    before they exist; `attach` gives it memory."""
    t = Tensor()
    _describe(t, shape, contiguous_strides(shape), dtype, device)
    return t


def attach(t: Tensor, x: torch.Tensor) -> None:
    t.data = x.data_ptr() or None


def _dim(x: Optional[torch.Tensor], index: int, default: int = 1) -> int:
    # A size the problem reads off a tensor, or a placeholder when the tensor lacks that dim:
    # the library then reports the tensor's number of dims, which it checks first.
    if x is None or x.dim() < (index + 1 if index >= 0 else -index):
        return default
    return concrete(x.shape[index])


def problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ak: Optional[torch.Tensor],
            av: Optional[torch.Tensor], kernel_size: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int], is_causal: Sequence[bool], scale: Optional[float],
            dense: bool, placement: Sequence[int] = ()) -> Problem:
    """The problem read off the tensors' shapes ([B, X.., H, D]) plus the window parameters.
    The rank is len(is_causal) (dense: 1); the library checks that the shapes agree with it.
    Dense: the number of keys is k's dim 1. `placement` (SPEC.md "Placed boxes"): () or
    global_extent[r] + query_origin[r] + key_origin[r], the key box's extents then read off k."""
    p = Problem()
    rank = len(is_causal)
    p.rank = rank
    p.batch = _dim(q, 0)
    for a in range(min(rank, 3)):
        p.extent[a] = _dim(q, 1 + a)
        if not dense:
            p.kernel_size[a], p.stride[a], p.dilation[a] = kernel_size[a], stride[a], dilation[a]
        p.is_causal[a] = int(bool(is_causal[a]))
    if dense:
        p.key_extent[0] = _dim(k, 1)
    elif placement:
        for a in range(min(rank, 3)):
            p.global_extent[a] = placement[a]
            p.query_origin[a] = placement[rank + a]
            p.key_origin[a] = placement[2 * rank + a]
            p.key_extent[a] = _dim(k, 1 + a)
    p.heads_q, p.head_dim = _dim(q, -2), _dim(q, -1)
    p.heads_kv, p.head_dim_v = _dim(k, -2), _dim(v, -1)
    if scale is not None:
        p.has_scale, p.scale = 1, float(scale)
    extra = ak if ak is not None else av  # either one gives Na: the library names the missing one
    p.num_additional = _dim(extra, 1, default=1) if extra is not None else 0
    return p


# Device workspace from torch's caching allocator (nattn_options.workspace_*): the library
# asks for scratch a few times per call and releases it before returning; the block is
# recycled by torch on the same stream, so the kernels enqueued with it stay ordered.
_WORKSPACE: Dict[int, torch.Tensor] = {}


def _workspace_allocate(nbytes: int, ctx: Optional[int]) -> Optional[int]:
    try:
        block = torch.empty(max(int(nbytes), 1), dtype=torch.uint8,
                            device=torch.device("cuda", ctx or 0))
    except Exception:  # noqa: BLE001 - no exception may cross into C; NULL says "failed"
        return None
    _WORKSPACE[block.data_ptr()] = block
    return block.data_ptr()


def _workspace_release(ptr: Optional[int], ctx: Optional[int]) -> None:
    _WORKSPACE.pop(ptr or 0, None)


# Module-level, so the C function pointers stay valid for the life of the process.
WORKSPACE_ALLOCATE = WorkspaceAllocate(_workspace_allocate)
WORKSPACE_RELEASE = WorkspaceRelease(_workspace_release)


def options(backend: int, device: torch.device, family: str = "",
            config_ids: Sequence[int] = (), tiles: Sequence[int] = (),
            deterministic: bool = False) -> Options:
    """Options of a call: backend, determinism, torch's current stream and workspace allocator
    (CUDA), and a forced kernel choice (family "" = automatic; tiles: own[3] + walk[3] or ()).
    Determinism: the call's own requirement (`deterministic`, the functional API's argument) or
    torch.use_deterministic_algorithms, read now (a backward's options are built when it runs)."""
    o = Options()
    o.backend = backend
    o.deterministic = int(deterministic or torch.are_deterministic_algorithms_enabled())
    if family:
        o.family = family.encode()
    for i in range(MAX_CONFIG_IDS):
        o.config_ids[i] = config_ids[i] if i < len(config_ids) else -1
    if tiles:
        for a in range(3):
            o.own_tile[a], o.walk_tile[a] = tiles[a], tiles[3 + a]
    if device.type == "cuda":
        # Kernels are ordered on torch's current stream, like every torch op.
        o.stream = torch.cuda.current_stream(device).cuda_stream
        o.workspace_allocate, o.workspace_release = WORKSPACE_ALLOCATE, WORKSPACE_RELEASE
        o.workspace_ctx = device.index or 0
    return o


def slots(tensors: Sequence, data: bool = True):
    """A C array of views; entries may be torch tensors, None, or prepared Tensor views."""
    return (Tensor * len(tensors))(*[x if isinstance(x, Tensor) else view(x, data)
                                      for x in tensors])


def _call(fn, where: str, *args) -> None:
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = fn(*args, err, _ERR_LEN)
    raise_for_status(code, err.value.decode(errors="replace"), where)


def check_forward(dense: bool, p: Problem, arr, where: str) -> None:
    """The forward's checks without memory (nattn_check_forward_shapes)."""
    _call(LIB.nattn_check_forward_shapes, where, ctypes.byref(p), arr, int(dense))


def check_backward(dense: bool, p: Problem, arr, where: str) -> None:
    _call(LIB.nattn_check_backward_shapes, where, ctypes.byref(p), arr, int(dense))


def forward(dense: bool, p: Problem, arr, o: Options, where: str) -> None:
    fn = LIB.nattn_attention_forward if dense else LIB.nattn_forward
    _call(fn, where, ctypes.byref(p), arr, ctypes.byref(o))


def backward(dense: bool, p: Problem, arr, o: Options, where: str) -> None:
    fn = LIB.nattn_attention_backward if dense else LIB.nattn_backward
    _call(fn, where, ctypes.byref(p), arr, ctypes.byref(o))


def _json(fn, where: str, *args, size: int = 1 << 16):
    """Calls fn(*args, text, text_len, err, err_len), growing the buffer if the text needs it."""
    while True:
        text, err = ctypes.create_string_buffer(size), ctypes.create_string_buffer(_ERR_LEN)
        code = fn(*args, text, size, err, _ERR_LEN)
        message = err.value.decode(errors="replace")
        need = re.search(r"_len = \d+ is invalid: the text needs (\d+) bytes", message)
        if code == STATUS_INVALID and need and int(need.group(1)) > size:
            size = int(need.group(1))
            continue
        raise_for_status(code, message, where)
        return json.loads(text.value.decode())


def explain(dense: bool, backward: bool, p: Problem, arr, o: Options, where: str) -> dict:
    fn = {(False, False): LIB.nattn_explain_forward, (False, True): LIB.nattn_explain_backward,
          (True, False): LIB.nattn_explain_attention_forward,
          (True, True): LIB.nattn_explain_attention_backward}[(dense, backward)]
    return _json(fn, where, ctypes.byref(p), arr, ctypes.byref(o))


def kernel_configs() -> list:
    return _json(LIB.nattn_kernel_configs, "nattn.kernel_configs")


def merge_arrays(outs: Sequence, lses: Sequence, data: bool = True) -> Tuple:
    n = len(outs)
    return slots(outs, data) if n else (Tensor * 1)(), slots(lses, data) if n else (Tensor * 1)()


def check_merge(outs_arr, lses_arr, n: int, out: Tensor, lse: Tensor, where: str) -> None:
    _call(LIB.nattn_check_merge_shapes, where, n, outs_arr, lses_arr, ctypes.byref(out),
          ctypes.byref(lse))


def merge(outs_arr, lses_arr, n: int, out: Tensor, lse: Tensor, o: Options, where: str) -> None:
    _call(LIB.nattn_merge_on_stream, where, n, outs_arr, lses_arr, ctypes.byref(out),
          ctypes.byref(lse), ctypes.byref(o))
