"""Backend names and availability. The C library chooses among backends (`backend=None`); this
module only maps names to nattn::BackendKind and asks the library what is available here, and
says which op path eager calls take (op_path)."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

from . import _fast, _lib, _native, _native_autograd

# Accepted names -> nattn::BackendKind. "cpu" is an alias of the reference backend.
_KINDS = {
    "auto": _lib.BACKEND_AUTO,
    "reference": _lib.BACKEND_REFERENCE,
    "cpu": _lib.BACKEND_REFERENCE,
    "cuda": _lib.BACKEND_CUDA,
}
_NAMES = {_lib.BACKEND_REFERENCE: "reference", _lib.BACKEND_CUDA: "cuda"}

# Asked once: availability is fixed for the life of the process, and a plain dict lookup is
# something torch.compile can trace (a ctypes call inside the traced function would not be).
_AVAILABLE = {kind: _lib.backend_available(kind) for kind in _NAMES}


class BackendInfo(NamedTuple):
    name: str
    available: bool
    reason: str  # why not, when unavailable; "" otherwise


def backends() -> List[BackendInfo]:
    """Every backend nattn knows, whether this build can use it on this machine, and why not."""
    out = []
    for kind, name in _NAMES.items():
        ok, reason = _AVAILABLE[kind]
        out.append(BackendInfo(name, ok, "" if ok else reason))
    return out


class OpPath(NamedTuple):
    name: str  # "fast" (one C call per op) or "custom_op" (torch.library dispatch)
    reason: str
    # The fast path's C call: "native" (the C++ dispatcher ops of libnattn_torch_ops.so) or
    # "ctypes" (libnattn's C ABI through ctypes: the library is absent or failed to load, or
    # NATTN_TORCH_OPS=0); "" when the fast path is off. For CPU tensors.
    call: str = ""
    # The same for CUDA tensors: "ctypes" also where the C++ ops are loaded but
    # NATTN_TORCH_OPS_CUDA=0 keeps CUDA tensors off them.
    cuda_call: str = ""
    # How the fast path records autograd: "cpp" (the C++ node of libnattn_torch_autograd_<torch
    # version>.so; its backward runs without the GIL) or "python" (a torch.autograd.Function:
    # no library built for this torch, or NATTN_TORCH_AUTOGRAD=0); "" when the fast path is off.
    autograd: str = ""


def op_path() -> OpPath:
    """The path a plain eager call takes. "fast": one C call, no torch.library dispatch
    (torch.compile, tracing, fake tensors, tensor subclasses, dispatch/function modes and
    functorch transforms still take the custom ops `torch.ops.nattn.*`); "custom_op": every
    call goes through the custom ops (NATTN_FAST_PATH=0). nattn._ops.CALLS counts the calls
    each path ran. `call` (CPU tensors) and `cuda_call` (CUDA tensors) say how the fast path
    calls the library: "native" (C++ dispatcher ops) or "ctypes"; the reason says why not
    native."""
    on, reason = _fast.enabled_reason()
    if not on:
        return OpPath("custom_op", reason, "")
    return OpPath("fast", reason, "native" if _native.LOADED else "ctypes",
                  "native" if _native.LOADED and _native.CUDA else "ctypes",
                  "cpp" if _native_autograd.LOADED else "python")


def backend_kind(backend: Optional[str]) -> int:
    """nattn::BackendKind for a `backend=` argument; refuses unknown names and, for an explicit
    name, a backend that is not available here (with the library's reason)."""
    if backend is None:
        return _lib.BACKEND_AUTO
    if not isinstance(backend, str):
        raise TypeError(f"backend = {backend!r} is invalid: must be None or a str "
                        f"({', '.join(repr(n) for n in _KINDS)})")
    kind = _KINDS.get(backend.lower())
    if kind is None:
        raise ValueError(f"backend = {backend!r} is invalid: must be None or one of "
                         f"{', '.join(repr(n) for n in _KINDS)}")
    if kind != _lib.BACKEND_AUTO:
        ok, reason = _AVAILABLE[kind]
        if not ok:
            raise NotImplementedError(f"backend = {backend!r} is not available: {reason}")
    return kind
