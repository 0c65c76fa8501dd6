"""The switches a forward needs on CUDA for its score to be the same bits every time it runs.

An item scored alone (a batch of one: no batch-mates, padding, packing or shared prefix) runs
the same shapes every time, so on the CPU it gets the same kernels and the same bits. On CUDA
a kernel may still differ run to run with the same shapes: cuDNN's autotuning, kernels that
reduce with atomics, cuDNN's attention; and TF32 or reduced-precision reductions, while
fixed for a shape, make the bits depend on settings another part of the process may change.
`batch_invariant` turns all of these off for the forward it wraps and puts them back after:
the default path keeps its fast kernels. The switches are the process's own (PyTorch keeps
them globally, not per thread), so a lock keeps deterministic forwards from restoring each
other's settings, and a forward of another model running at the same moment runs under them
too (its results stay right, only its last bits may move). cuBLAS is reproducible with one
stream; `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the server's environment makes it so with
several (PyTorch warns once when it is missing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

_switching = threading.Lock()
# cuDNN's fused attention is left out: the others' forwards are deterministic.
DETERMINISTIC_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def batch_invariant(device: torch.device | str) -> Iterator[None]:
    """Deterministic kernels, no TF32 and full-precision reductions for the forward run
    inside, on CUDA; nothing changes elsewhere (the CPU needs none of it)."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    with _switching:
        saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                 matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark,
                 matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)
        torch.use_deterministic_algorithms(True, warn_only=True)
        matmul.allow_tf32 = cudnn.allow_tf32 = cudnn.benchmark = False
        matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = False
        try:
            with sdpa_kernel(DETERMINISTIC_SDPA):
                yield
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark,
             matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction) = saved[2:]
