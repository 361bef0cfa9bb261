"""The fused passes of ``fused.py`` compiled for the CPU: ``native.cpp``, built on first use, called through ctypes.

On CPU tensors the eager passes are bound by per-op overhead and memory traffic (the product's backward alone is
about ten passes over ``[64, rows, C]`` buffers); the compiled loops keep the blades of a pack of channels in
registers and make one pass. The build needs only a C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``),
takes ~30 s, and is cached by the hash of the source, the flags and the compiler in
``$DIST_HYENA_CACHE`` (default ``~/.cache/dist_hyena``): ranks that build at once each write their own file and
rename it into place. Without a compiler, or with ``DIST_HYENA_NATIVE=0``, the layers run the eager passes (a
warning says why, once); ``DIST_HYENA_NATIVE=1`` makes a failed build an error. GPUs always run the eager passes.

With more than one torch thread, rows are split across threads (ctypes releases the GIL during each call).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import algebra

SOURCE = Path(__file__).with_name("native.cpp")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-Wno-psabi")
ENV = "DIST_HYENA_NATIVE"
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
# Below this many (row, channel) pairs a call is not split across threads.
_PARALLEL_MIN = 1 << 15


def _defines() -> list[str]:
    """The product's tables and the blades' grades from the algebra, as the source's compile-time constants."""

    def table(rows) -> str:
        return "{" + ",".join("{" + ",".join(map(str, r)) + "}" for r in rows) + "}"

    sign, path = algebra.term_paths()
    right = [[j for j, _ in row] for row in algebra.product_terms()]
    return [f"-DDH_RIGHT={table(right)}", f"-DDH_SIGN={table(sign)}", f"-DDH_PATH={table(path)}",
            f"-DDH_NPATH={len(algebra.grade_paths())}", f"-DDH_GRADE={{{','.join(map(str, algebra.GRADES))}}}"]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    """``$DIST_HYENA_CACHE``, else ``$XDG_CACHE_HOME/dist_hyena`` (``~/.cache/dist_hyena``)."""
    if os.environ.get("DIST_HYENA_CACHE"):
        return Path(os.environ["DIST_HYENA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_hyena"


def build() -> Path:
    """Compile ``native.cpp`` (once per source, flags and compiler) and return the shared library's path."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    command = [cxx, *FLAGS, *_defines()]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *command[1:], version, platform.machine()]).encode())
    target = cache_dir() / f"native-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"[dist_hyena] compiling the Clifford layers' CPU kernels into {target} (once per machine, ~30 s)",
          file=sys.stderr, flush=True)
    fd, partial = tempfile.mkstemp(prefix=target.stem + ".", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*command, str(SOURCE), "-o", partial], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} ... {SOURCE} failed:\n{done.stderr[-2000:]}")
        os.replace(partial, target)  # complete or absent: a concurrent build renames an identical file
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they are switched off or cannot be built (then the eager passes run)."""
    mode = os.environ.get(ENV, "")
    if mode == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as err:
        if mode == "1":
            raise RuntimeError(f"{ENV}=1 but the native kernels could not be built: {err}") from err
        warnings.warn(f"dist_hyena: the Clifford layers run their eager passes, slower on CPU ({err}); "
                      f"{ENV}=0 silences this", RuntimeWarning, stacklevel=2)
        return None
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for suffix in _DTYPES.values():
        getattr(lib, f"product_forward_{suffix}").argtypes = [p] * 6 + [i64, i64, i64, f64]
        getattr(lib, f"product_backward_{suffix}").argtypes = [p] * 9 + [i64, i64, i64, f64]
        getattr(lib, f"gate_norm_forward_{suffix}").argtypes = [i32] + [p] * 5 + [i64, i64, i64, f64]
        getattr(lib, f"gate_norm_backward_{suffix}").argtypes = [i32] + [p] * 9 + [i64, i64, i64, f64]
        dims = ctypes.POINTER(i64)
        getattr(lib, f"compact_mlp_forward_{suffix}").argtypes = [i32, dims] + [p] * 16 + [i64, f64]
        getattr(lib, f"compact_mlp_backward_{suffix}").argtypes = [i32, dims] + [p] * 29 + [i64, f64]
    return lib


def supports(x: torch.Tensor) -> bool:
    """Whether the compiled kernels take this operand (and its kind of partners): CPU, float32 or float64."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and library() is not None


def _ptr(t: torch.Tensor | None, row0: int = 0, channels: int = 0):
    return None if t is None else t.data_ptr() + row0 * channels * t.element_size()


def _row_parts(rows: int, channels: int) -> list[tuple[int, int]]:
    threads = torch.get_num_threads()
    if threads == 1 or rows * channels < _PARALLEL_MIN:
        return [(0, rows)]
    step = -(-rows // threads)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="dist_hyena-native")


def _over_rows(rows: int, channels: int, call, accumulators: list[torch.Tensor | None]) -> None:
    """Run ``call(row0, row1, accumulators)`` over parts of the rows, in parallel with several torch threads;
    each part but the first accumulates its parameter gradients into its own zeroed copies, summed at the end."""
    parts = _row_parts(rows, channels)
    if len(parts) == 1:
        call(0, rows, accumulators)
        return
    own = [accumulators] + [[None if t is None else torch.zeros_like(t) for t in accumulators] for _ in parts[1:]]
    list(_pool(len(parts)).map(lambda p: call(*p[0], p[1]), zip(parts, own, strict=True)))
    for extra in own[1:]:
        for total, part in zip(accumulators, extra, strict=True):
            if total is not None:
                total += part


def _fn(name: str, x: torch.Tensor):
    return getattr(library(), f"{name}_{_DTYPES[x.dtype]}")


def product_forward(a, x, w, s, skip, eps2: float) -> torch.Tensor:
    """``skip + GP_w(a, normalise_s(x))`` (``fused.NormalisedProduct``) on ``[8, rows, C]`` operands, path weights
    ``w [20, C]``."""
    a, x, w, s, skip = (t.contiguous() for t in (a, x, w, s, skip))
    out = torch.empty_like(a)
    _, rows, channels = a.shape
    fn = _fn("product_forward", a)
    _over_rows(rows, channels, lambda r0, r1, _: fn(
        _ptr(a, r0, channels), _ptr(x, r0, channels), _ptr(w), _ptr(s), _ptr(skip, r0, channels),
        _ptr(out, r0, channels), rows * channels, r1 - r0, channels, eps2), [])
    return out


def product_backward(grad, a, x, w, s, eps2: float, need_params: bool):
    """Gradients of :func:`product_forward` for a, x and (``need_params``) w, s; None for those not asked for."""
    grad, a, x, w, s = (t.contiguous() for t in (grad, a, x, w, s))
    grad_a, grad_x = torch.empty_like(a), torch.empty_like(x)
    grad_w, grad_s = (torch.zeros_like(w), torch.zeros_like(s)) if need_params else (None, None)
    _, rows, channels = a.shape
    fn = _fn("product_backward", a)
    _over_rows(rows, channels, lambda r0, r1, acc: fn(
        _ptr(grad, r0, channels), _ptr(a, r0, channels), _ptr(x, r0, channels), _ptr(w), _ptr(s),
        _ptr(grad_a, r0, channels), _ptr(grad_x, r0, channels), _ptr(acc[0]), _ptr(acc[1]),
        rows * channels, r1 - r0, channels, eps2), [grad_w, grad_s])
    return grad_a, grad_x, grad_w, grad_s


def _flags(scale, ln_scale, squared: bool) -> int:
    """1 gated, 2 layer norm, 4 squared-norm invariant (meaningful with a gate only)."""
    gated = scale is not None
    return gated | (ln_scale is not None) << 1 | (gated and bool(squared)) << 2


def gate_norm_forward(h, scale, shift, ln_scale, squared: bool, eps: float) -> torch.Tensor:
    """The gate and the layer norm (``fused.GateNorm``) on ``[8, rows, C]``; ``scale, shift [4, C]`` and
    ``ln_scale [C]`` or None."""
    h, scale, shift, ln_scale = (None if t is None else t.contiguous() for t in (h, scale, shift, ln_scale))
    out = torch.empty_like(h)
    _, rows, channels = h.shape
    fn, flags = _fn("gate_norm_forward", h), _flags(scale, ln_scale, squared)
    _over_rows(rows, channels, lambda r0, r1, _: fn(
        flags, _ptr(h, r0, channels), _ptr(scale), _ptr(shift), _ptr(ln_scale), _ptr(out, r0, channels),
        rows * channels, r1 - r0, channels, eps), [])
    return out


def gate_norm_backward(grad, h, scale, shift, ln_scale, squared: bool, eps: float):
    """Gradients of :func:`gate_norm_forward` for h, scale, shift and ln_scale (None where those are None)."""
    grad, h, scale, shift, ln_scale = (None if t is None else t.contiguous() for t in (grad, h, scale, shift, ln_scale))
    grad_h = torch.empty_like(h)
    grads = [None if t is None else torch.zeros_like(t) for t in (scale, shift, ln_scale)]
    _, rows, channels = h.shape
    fn, flags = _fn("gate_norm_backward", h), _flags(scale, ln_scale, squared)
    _over_rows(rows, channels, lambda r0, r1, acc: fn(
        flags, _ptr(grad, r0, channels), _ptr(h, r0, channels), _ptr(scale), _ptr(shift), _ptr(ln_scale),
        _ptr(grad_h, r0, channels), _ptr(acc[0]), _ptr(acc[1]), _ptr(acc[2]), rows * channels, r1 - r0, channels,
        eps), grads)
    return grad_h, *grads



def _mlp_call(name: str, vectors, scalars, read, params, squared: bool):
    """The kernel, its flags, its dims array (Cv, S, H, O, nv, ns) and the number of rows (the leading dims) for
    :func:`compact_mlp_forward` and backward."""
    cv, width = vectors.shape[-2], scalars.shape[-1]
    dims = (ctypes.c_int64 * 6)(cv, width, params[5].shape[1], params[10].shape[2], *read)
    return _fn(name, scalars), _flags(params[7], params[9], squared), dims, math.prod(scalars.shape[:-1])


def compact_mlp_forward(vectors, scalars, read, params, squared: bool, eps: float):
    """A one-layer Clifford MLP on compact rows, read out (``fused.CompactMLP``): ``vectors [..., Cv, 3]``, ``scalars
    [..., S]`` -> ``(vectors [..., nv, 3], scalars [..., ns])`` for ``read = (nv, ns)``. ``params``: left weight,
    right weight and bias, skip weight and bias, path weights, norm gate, gate scale and shift, layer-norm scale (or
    None), last weight and bias, in their modules' layouts."""
    vectors, scalars, *params = (None if t is None else t.contiguous() for t in (vectors, scalars, *params))
    (cv, width), (nv, ns) = (vectors.shape[-2], scalars.shape[-1]), read
    out_v, out_s = scalars.new_empty(*scalars.shape[:-1], nv, 3), scalars.new_empty(*scalars.shape[:-1], ns)
    fn, flags, dims, rows = _mlp_call("compact_mlp_forward", vectors, scalars, read, params, squared)
    _over_rows(rows, params[5].shape[1], lambda r0, r1, _: fn(
        flags, dims, _ptr(vectors, r0, 3 * cv), _ptr(scalars, r0, width), *map(_ptr, params), _ptr(out_v, r0, 3 * nv),
        _ptr(out_s, r0, ns), r1 - r0, eps), [])
    return out_v, out_s


def compact_mlp_backward(grad_v, grad_s, vectors, scalars, read, params, squared: bool, eps: float,
                         need_inputs: tuple[bool, bool]):
    """Gradients of :func:`compact_mlp_forward`: of the vectors and the scalars (None where ``need_inputs`` says
    no), and of every parameter (None for a missing layer-norm scale)."""
    grad_v, grad_s, vectors, scalars, *params = (None if t is None else t.contiguous()
                                                 for t in (grad_v, grad_s, vectors, scalars, *params))
    (cv, width), (nv, ns) = (vectors.shape[-2], scalars.shape[-1]), read
    grad_vec, grad_sca = (torch.empty_like(t) if need else None
                          for t, need in zip((vectors, scalars), need_inputs, strict=True))
    grads = [None if t is None else torch.empty_like(t) for t in params]  # written by the kernel
    fn, flags, dims, rows = _mlp_call("compact_mlp_backward", vectors, scalars, read, params, squared)
    _over_rows(rows, params[5].shape[1], lambda r0, r1, acc: fn(
        flags, dims, _ptr(grad_v, r0, 3 * nv), _ptr(grad_s, r0, ns), _ptr(vectors, r0, 3 * cv),
        _ptr(scalars, r0, width), *map(_ptr, params[:-1]), _ptr(grad_vec, r0, 3 * cv), _ptr(grad_sca, r0, width),
        *map(_ptr, acc), r1 - r0, eps), grads)
    return grad_vec, grad_sca, grads
