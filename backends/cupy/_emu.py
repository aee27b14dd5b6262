"""Run the generated CUDA kernels of ``backends/cupy/unet.py`` on the CPU (for tests without a GPU).

The sources are compiled unchanged by a host C++20 compiler against a small shim: ``__global__``,
``__device__`` and ``__forceinline__`` become plain (inline) functions, ``__shared__`` variables
become function statics (one block runs at a time, so they are the block's shared memory), and
``threadIdx``/``blockIdx``/``blockDim``/``gridDim`` are globals. A launch runs the grid's blocks
one after another; the threads of a block are fibers (``ucontext``) on one OS thread, and
``__syncthreads()`` passes control to the next fiber, so every thread of the block reaches a
barrier before any passes it — the semantics of a CUDA block barrier. Kernels without
``__syncthreads`` run their threads one after another. This executes the kernels' index
arithmetic, bounds checks, tiling and reduction logic exactly as written; it does not model
warps, concurrent interleavings between barriers (so it cannot find data races), or the device's
floating-point contraction (FMA) and math-library rounding.

:class:`EmulatedDevice` is a :class:`~refdiff.backends.cupy.unet.KernelDevice` whose launches
run here (with small tiles, so every code path is hit on tiny arrays) and whose GEMMs are the
NumPy cuBLAS emulation of ``backends/cupy/_kernel_ref.py``. :func:`nvcc_compile` compiles the same
sources for a real GPU architecture with ``nvcc`` when one is installed (no GPU needed).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from collections.abc import Iterable, Mapping

import numpy as np

from refdiff._errors import RefdiffError

from ._kernel_ref import cublas_gemm
from .unet import KERNELS, KernelDevice, KernelSpec, marshal_args

__all__ = [
    "SHIM",
    "EmulatedDevice",
    "build",
    "compiler",
    "nvcc_compile",
    "EmulationError",
    "EMULATOR_TILING",
    "host_source",
    "run_kernel",
]


class EmulationError(RefdiffError, RuntimeError):
    """No host compiler, or a generated source that does not compile."""


SHIM = r"""// refdiff: CUDA-on-CPU shim for the generated UNet kernels (tests only)
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <math.h>
#include <vector>
#include <ucontext.h>
struct refdiff_dim3 { unsigned int x = 1, y = 1, z = 1; };
static refdiff_dim3 threadIdx, blockIdx, blockDim, gridDim;
// the threads of a block are fibers on one OS thread; __syncthreads passes control round-robin
static std::vector<ucontext_t> refdiff_ctx;
static ucontext_t refdiff_main_ctx;
static unsigned refdiff_cur = 0, refdiff_nt = 1;
static const std::function<void()>* refdiff_body = nullptr;
static inline refdiff_dim3 refdiff_tid(unsigned t)
{
    return refdiff_dim3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}
static inline void __syncthreads()
{
    const unsigned me = refdiff_cur, next = (me + 1) % refdiff_nt;
    if (next == me) return;
    refdiff_cur = next;
    threadIdx = refdiff_tid(next);
    swapcontext(&refdiff_ctx[me], &refdiff_ctx[next]);
}
static void refdiff_fiber(unsigned t)
{
    (*refdiff_body)();
    // finished: hand over to the next fiber (resumed from its last barrier) or back to the launcher
    if (t + 1 < refdiff_nt) { refdiff_cur = t + 1; threadIdx = refdiff_tid(t + 1); }
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

template <class F>
static void refdiff_run(refdiff_dim3 grid, refdiff_dim3 block, bool syncs, F body)
{
    gridDim = grid;
    blockDim = block;
    const unsigned nb = grid.x * grid.y * grid.z, nt = block.x * block.y * block.z;
    const std::function<void()> fn(body);
    const size_t stack = 1 << 16;
    std::vector<char> stacks(syncs ? (size_t)nt * stack : 0);
    for (unsigned b = 0; b < nb; ++b) {
        blockIdx = refdiff_dim3{b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
        if (!syncs) {
            for (unsigned t = 0; t < nt; ++t) { threadIdx = refdiff_tid(t); fn(); }
            continue;
        }
        refdiff_ctx.assign(nt, ucontext_t());
        refdiff_nt = nt;
        refdiff_body = &fn;
        for (unsigned t = 0; t < nt; ++t) {
            getcontext(&refdiff_ctx[t]);
            refdiff_ctx[t].uc_stack.ss_sp = stacks.data() + (size_t)t * stack;
            refdiff_ctx[t].uc_stack.ss_size = stack;
            refdiff_ctx[t].uc_link = t + 1 < nt ? &refdiff_ctx[t + 1] : &refdiff_main_ctx;
            makecontext(&refdiff_ctx[t], (void (*)())refdiff_fiber, 1, t);
        }
        refdiff_cur = 0;
        threadIdx = refdiff_tid(0);
        swapcontext(&refdiff_main_ctx, &refdiff_ctx[0]);
    }
}
"""

#: Small tiles for the emulator, so tiny test arrays cross several tiles and blocks.
EMULATOR_TILING: Mapping[str, Mapping[str, int]] = {
    "pack": {"tile": 4, "rows": 2},
    "unpack": {"tile": 4, "rows": 2},
    "gn_forward": {"block": 16},
    "gn_backward": {"block": 16},
    "adam_ema": {},
    "sumsq": {"block": 8},
}

_CT = {"float32": "float", "float64": "double"}


def _concrete(ctype: str, dtype: str) -> str:
    out = ctype.replace("__restrict__", "").strip()
    parts = out.replace("*", " * ").split()
    parts = [_CT[dtype] if p == "T" else p for p in parts]
    return " ".join(parts).replace(" *", "*")


def host_source(specs: Iterable[KernelSpec]) -> str:
    """One C++ translation unit: the shim, each kernel source in its own namespace, a launcher per kernel."""
    out = [SHIM]
    for n, sp in enumerate(specs):
        out.append(f"namespace refdiff_k{n} {{\n{sp.source}}}  // namespace refdiff_k{n}\n")
        params = ", ".join(f"{_concrete(t, sp.dtype)} {name}" for t, name in sp.params)
        names = ", ".join(name for _, name in sp.params)
        out.append(
            f'extern "C" void refdiff_launch_{sp.name}(unsigned refdiff_gx, unsigned refdiff_gy, '
            f"unsigned refdiff_gz, unsigned refdiff_bx, unsigned refdiff_by, unsigned refdiff_bz, "
            f"{params})\n{{\n"
            f"    refdiff_run(refdiff_dim3{{refdiff_gx, refdiff_gy, refdiff_gz}}, "
            f"refdiff_dim3{{refdiff_bx, refdiff_by, refdiff_bz}}, "
            f"{'true' if sp.syncs else 'false'}, [=]() {{ refdiff_k{n}::{sp.name}({names}); }});\n}}\n"
        )
    return "\n".join(out)


def compiler() -> str | None:
    """The host C++ compiler used for emulation (``$CXX``, g++ or clang++), or None."""
    for c in (os.environ.get("CXX"), "g++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _cache_dir() -> Path:
    d = (
        Path(tempfile.gettempdir())
        / f"refdiff_cuda_emu_{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    d.mkdir(parents=True, exist_ok=True)
    return d


def build(specs: Iterable[KernelSpec]) -> ctypes.CDLL:
    """Compile the kernels for the CPU (cached by source hash) and load the shared library."""
    specs = list(specs)
    cxx = compiler()
    if cxx is None:
        raise EmulationError(
            "emulating the CUDA kernels needs a C++20 compiler (g++ or clang++; set CXX)"
        )
    src = host_source(specs)
    key = hashlib.sha256((cxx + src).encode()).hexdigest()[:20]
    lib = _cache_dir() / f"kernels_{key}.so"
    if not lib.exists():
        cpp = lib.with_suffix(f".{os.getpid()}.cpp")
        cpp.write_text(src)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-o", str(tmp), str(cpp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulationError(
                f"the generated kernels do not compile on the host ({' '.join(cmd)}):"
                f"\n{res.stderr[-4000:]}"
            )
        os.replace(tmp, lib)
        cpp.unlink(missing_ok=True)
    return ctypes.CDLL(str(lib))


def nvcc_compile(
    specs: Iterable[KernelSpec], *, arch: str = "sm_90", nvcc: str | None = None
) -> str:
    """Compile the kernel sources with ``nvcc`` for ``arch`` (to PTX; no GPU needed); returns the PTX.

    Each source goes in its own namespace of one translation unit. Raises
    :class:`EmulationError` with the compiler's message when one does not compile.
    """
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        raise EmulationError("nvcc is not installed")
    specs = list(specs)
    body = "\n".join(f"namespace refdiff_k{n} {{\n{sp.source}}}\n" for n, sp in enumerate(specs))
    with tempfile.TemporaryDirectory() as d:
        cu = Path(d) / "kernels.cu"
        cu.write_text(body)
        out = Path(d) / "kernels.ptx"
        cmd = [nvcc, f"-arch={arch}", "--std=c++14", "-ptx", "-o", str(out), str(cu)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EmulationError(
                f"nvcc rejected the generated kernels ({' '.join(cmd)}):\n{res.stderr[-4000:]}"
            )
        return out.read_text()


_ARGT = {
    np.int32: ctypes.c_int,
    np.int64: ctypes.c_longlong,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}


def run_kernel(lib: ctypes.CDLL, spec: KernelSpec, grid, block, vals) -> None:
    """Launch ``spec`` from a library made by :func:`build`; ``vals`` as from ``marshal_args``."""
    if len(tuple(grid)) != 3 or len(tuple(block)) != 3:
        raise EmulationError(f"grid {grid} and block {block} must have three entries each")
    fn = getattr(lib, f"refdiff_launch_{spec.name}")
    cargs = [ctypes.c_uint(int(v)) for v in tuple(grid) + tuple(block)]
    for v in vals:
        if isinstance(v, np.ndarray):
            cargs.append(ctypes.c_void_p(v.ctypes.data))
        else:
            cargs.append(_ARGT[type(v)](v))
    fn.restype = None
    fn(*cargs)


class EmulatedDevice(KernelDevice):
    """The kernel device with launches emulated on the CPU and cuBLAS emulated in NumPy."""

    name = "emulated"
    xp = np
    elementwise_block = 8
    elementwise_max_grid = 4

    def __init__(self, precision: str = "fp32", *, tiling: Mapping | None = None):
        super().__init__(precision)
        self.tiling = dict(EMULATOR_TILING if tiling is None else tiling)
        specs = [KERNELS[k](dt, **self.tiling[k]) for k in KERNELS for dt in ("float32", "float64")]
        self._lib = build(specs)
        self._specs = {
            (k, dt): KERNELS[k](dt, **self.tiling[k])
            for k in KERNELS
            for dt in ("float32", "float64")
        }
        self.launches: dict[str, int] = {}

    def launch(self, spec: KernelSpec, grid, block, args) -> None:
        """Run one kernel launch on the CPU (arguments checked as for the GPU)."""
        vals = marshal_args(spec, args, lambda a: isinstance(a, np.ndarray))
        run_kernel(self._lib, spec, grid, block, vals)
        self.launches[spec.name] = self.launches.get(spec.name, 0) + 1

    def gemm(
        self, transa, transb, m, n, k, A, a_off, lda, B, b_off, ldb, beta, C, c_off, ldc
    ) -> None:
        """The NumPy cuBLAS emulation (:func:`~refdiff.backends.cupy._kernel_ref.cublas_gemm`)."""
        cublas_gemm(
            transa,
            transb,
            m,
            n,
            k,
            1.0,
            A,
            a_off,
            lda,
            B,
            b_off,
            ldb,
            beta,
            C,
            c_off,
            ldc,
            precision=self.precision,
        )
