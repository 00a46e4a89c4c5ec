"""NCCL's all-reduce called directly, as serving engines call it (vLLM's PyNcclCommunicator
does the same through ctypes): one `ncclAllReduce` on the caller's current stream, nothing else.

torch.distributed.all_reduce, by contrast, makes each call a work object and runs NCCL on a
side stream that waits on the caller's stream through a CUDA event and is waited on through
another. Eagerly that costs the host several times a kernel launch per collective, 2·L times a
step (scripts/tp_probe.py measures both in place); inside a CUDA graph both become nodes.

The library is the NCCL PyTorch already loaded (`libnccl.so.2`); the communicator is made once
per process group from a unique id that rank 0 draws and the host group broadcasts, and
destroyed by `close` once every rank is done with it (`close_all`).
"""
from __future__ import annotations

import ctypes

import torch
import torch.distributed as dist

# ncclDataType_t and ncclRedOp_t values from nccl.h
_DTYPES = {torch.int8: 0, torch.uint8: 1, torch.int32: 2, torch.int64: 4, torch.float16: 6,
           torch.float32: 7, torch.float64: 8, torch.bfloat16: 9}
_SUM = 0
LIBRARY = "libnccl.so.2"


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


def load(name: str = LIBRARY):
    """NCCL's C library with the calls used here typed, or OSError."""
    lib = ctypes.CDLL(name)
    lib.ncclGetUniqueId.argtypes = [ctypes.POINTER(_UniqueId)]
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, _UniqueId,
                                     ctypes.c_int]
    lib.ncclAllReduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    for f in (lib.ncclGetUniqueId, lib.ncclCommInitRank, lib.ncclAllReduce, lib.ncclCommDestroy):
        f.restype = ctypes.c_int
    return lib


class DirectAllReduce:
    """An in-place sum over the ranks of `host_group` (a gloo group that carries the unique
    id), through NCCL on the current stream. Call it as the decoder's all_reduce hook."""

    def __init__(self, rank: int, world: int, host_group, lib=None):
        self.lib = lib or load()
        uid = _UniqueId()
        if rank == 0:
            self._check(self.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        box = [bytes(uid.internal)]
        dist.broadcast_object_list(box, src=0, group=host_group)
        ctypes.memmove(ctypes.byref(uid), box[0], 128)
        self.comm = ctypes.c_void_p()
        self._check(self.lib.ncclCommInitRank(ctypes.byref(self.comm), world, uid, rank),
                    "ncclCommInitRank")
        self.world = world

    def _check(self, code: int, what: str):
        if code != 0:
            raise RuntimeError(f"{what}: NCCL error {code} "
                               f"({self.lib.ncclGetErrorString(code).decode()})")

    def close(self) -> None:
        """Destroy the communicator (ncclCommDestroy) after the device's queued work, once;
        a later call does nothing, and an all-reduce after it is an error. Every rank must be
        past its last collective first (close_all waits for them)."""
        if self.comm is None:
            return
        torch.cuda.synchronize()
        comm, self.comm = self.comm, None
        self._check(self.lib.ncclCommDestroy(comm), "ncclCommDestroy")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.comm is None:
            raise RuntimeError("all-reduce: the NCCL communicator was closed")
        if t.dtype not in _DTYPES or not t.is_contiguous():
            raise ValueError(f"all-reduce: a contiguous tensor of {', '.join(map(str, _DTYPES))} "
                             f"is needed, got {t.dtype}, strides {t.stride()}")
        ptr = t.data_ptr()
        self._check(self.lib.ncclAllReduce(ptr, ptr, t.numel(), _DTYPES[t.dtype], _SUM, self.comm,
                                           torch.cuda.current_stream(t.device).cuda_stream),
                    "ncclAllReduce")
        return t


def close_all(reduce, host_group) -> None:
    """Every rank's DirectAllReduce closed once all ranks reach this point (a barrier over
    `host_group` first, so no rank destroys its communicator while a peer is still inside a
    collective on it); nothing when `reduce` is None (the torch.distributed path)."""
    dist.barrier(group=host_group)
    if reduce is not None:
        reduce.close()


def direct_all_reduce(rank: int, world: int, host_group):
    """(a DirectAllReduce, None), or (None, why) on every rank where NCCL's library cannot be
    loaded on some rank: the ranks agree first (over host_group), so none waits for a
    communicator the others will not make."""
    try:
        lib, why = load(), None
    except OSError as e:
        lib, why = None, f"{LIBRARY} not loadable on rank {rank} ({e})"
    every = [None] * world
    dist.all_gather_object(every, why, group=host_group)
    failed = next((w for w in every if w is not None), None)
    if failed is not None:
        return None, failed
    return DirectAllReduce(rank, world, host_group, lib), None
