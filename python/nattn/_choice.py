"""nattn.kernel_choice: forcing a kernel family, configuration or tile shape for experiments.

The choice is per thread. The functional API reads it when it is called and passes it to the
custom ops as arguments (family, config_ids, tiles), so a torch.compile graph records the choice
it was traced with, and re-traces when the choice in force differs.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple, Union

from ._checks import is_int

MAX_CONFIG_IDS = 4  # NATTN_C_MAX_CONFIG_IDS (one per kernel role)


class Choice(NamedTuple):
    family: str = ""                 # "" = automatic
    config_ids: Tuple[int, ...] = ()  # rows of nattn.kernel_configs()
    tiles: Tuple[int, ...] = ()       # own[3] + walk[3]; () = chosen by the plan


AUTO = Choice()
_STATE = threading.local()

TileArg = Optional[Tuple[Sequence[int], Sequence[int]]]


def current() -> Choice:
    """The choice in force on this thread (AUTO outside any kernel_choice block)."""
    return getattr(_STATE, "choice", AUTO)


def _tile(name: str, value) -> Tuple[int, int, int]:
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise TypeError(f"{name} = {value!r} is invalid: must be a tuple of 1 to 3 ints (one per "
                        "spatial axis)")
    for a, v in enumerate(value):
        if not is_int(v):
            raise TypeError(f"{name}[{a}] = {v!r} is invalid: must be an int, not "
                            f"{type(v).__name__}")
        if not 1 <= v < 2**31:
            raise ValueError(f"{name}[{a}] = {v} is invalid: must be >= 1 (tiles past the "
                             "tuple's length are 1)")
    return tuple(int(v) for v in value) + (1,) * (3 - len(value))


def make(family: Optional[str] = None, config: Union[None, int, Sequence[int]] = None,
         tile: TileArg = None) -> Choice:
    """A Choice from kernel_choice's arguments (types checked here, values by the library)."""
    if family is not None and not isinstance(family, str):
        raise TypeError(f"family = {family!r} is invalid: must be None or a str such as 'sm80', "
                        "'generic' or 'reference'")
    if config is None:
        ids: Tuple[int, ...] = ()
    elif is_int(config):
        ids = (config,)
    elif isinstance(config, (tuple, list)) and all(is_int(c) for c in config):
        ids = tuple(config)
    else:
        raise TypeError(f"config = {config!r} is invalid: must be None, an int or a tuple of ints "
                        "(ids of nattn.kernel_configs() rows)")
    if len(ids) > MAX_CONFIG_IDS:
        raise ValueError(f"config = {config!r} is invalid: at most {MAX_CONFIG_IDS} ids (one per "
                         "kernel role)")
    for i in ids:
        if not 0 <= i < 2**31:
            raise ValueError(f"config = {config!r} is invalid: {i} is not a row id (ids are >= 0)")
    if tile is None:
        tiles: Tuple[int, ...] = ()
    elif (isinstance(tile, (tuple, list)) and len(tile) == 2
          and all(isinstance(t, (tuple, list)) for t in tile)):
        tiles = _tile("tile[0] (own)", tile[0]) + _tile("tile[1] (walk)", tile[1])
    else:
        raise TypeError(f"tile = {tile!r} is invalid: must be None or a pair (own, walk) of int "
                        "tuples, one int per spatial axis, e.g. ((8, 16), (8, 8))")
    return Choice(family or "", tuple(int(i) for i in ids), tiles)


@contextlib.contextmanager
def kernel_choice(family: Optional[str] = None, config: Union[None, int, Sequence[int]] = None,
                  tile: TileArg = None) -> Iterator[Choice]:
    """Forces the kernels of nattn calls made on this thread inside the block.

    family: "sm90", "sm80", "generic" (CUDA) or "reference" (CPU); None = automatic.
    config: id(s) of nattn.kernel_configs() rows, at most one per kernel role (forward,
        backward_dq, backward_dkdv; backward_dkdv_dq: sm90's fast backward, one kernel adding
        dQ partials into a float32 workspace; for a deterministic backward (under
        torch.use_deterministic_algorithms or with the call's deterministic=True) its ordered
        variant, which adds them in a fixed order).
    tile: a pair (own, walk) of box shapes, one int per spatial axis, e.g. ((8, 16), (8, 8)):
        the query box a CTA owns and the key boxes it walks (forward, backward dQ); powers of two
        whose products are the configuration's block_q and block_kv. Axes past a tuple's
        length are 1. None = chosen by the plan.

    A choice the call cannot use raises (NotImplementedError or ValueError, with the reason);
    it never falls back silently. A nested block replaces the outer choice until it exits. The
    backward of a call runs with the choice its forward ran with.
    """
    choice = make(family, config, tile)
    previous = current()
    _STATE.choice = choice
    try:
        yield choice
    finally:
        _STATE.choice = previous
