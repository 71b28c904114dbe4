"""Inputs of every kind: dtypes, layouts, shapes, torch tensors, threads, SIMD selection."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest
from nasty import DTYPES, assert_angles, assert_decomposition, check_op, f64, layouts, nasty_rows

import geonorm_core as gn
from geonorm_core import slow
from geonorm_core._native import _core

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_all(x, y=None):
    """Every op on x, compared with the oracle."""
    dtype = np.dtype(x.dtype).name
    assert_decomposition(gn.decompose(x), slow.decompose(x), dtype, f" [{dtype} {x.shape}]")
    y = x[..., ::-1] if y is None else y
    assert_angles(gn.rotation(x, y), slow.rotation(x, y), dtype, f" [{dtype} {x.shape}]")
    d = x.shape[-1]
    w = np.linspace(0.5, 2, d).astype(x.dtype)
    b = np.linspace(-1, 1, d).astype(x.dtype)
    check_op("layer_norm", x, w, b, where=f" [{dtype} {x.shape}]")
    check_op("rms_norm", x, w, where=f" [{dtype} {x.shape}]")
    check_op("remove_uniform", x, where=f" [{dtype} {x.shape}]")


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("d", (3, 17, 64))
@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts(simd, dtype, d):
    """non-contiguous, Fortran, negative strides, big-endian, misaligned, read-only."""
    x = nasty_rows(d, DTYPES[dtype])
    seen = []
    for name, view in layouts(x):
        np.testing.assert_array_equal(f64(view), f64(x))
        try:
            run_all(view, y=view[::-1])
        except AssertionError as e:
            raise AssertionError(f"layout {name}: {e}") from None
        seen.append(name)
    assert {"strided", "negative", "misaligned", "read-only"} <= set(seen)


def test_misaligned_is_really_misaligned():
    for dtype in DTYPES.values():
        x = nasty_rows(17, dtype)
        m = dict(layouts(x))["misaligned"]
        assert m.ctypes.data % dtype.itemsize != 0 or dtype.itemsize == 1
        run_all(m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_rows_with_zero_strides(dtype):
    rng = np.random.default_rng(0)
    row = rng.standard_normal(33).astype(DTYPES[dtype])
    run_all(np.broadcast_to(row, (5, 33)))  # every row the same memory
    col = rng.standard_normal((5, 1)).astype(DTYPES[dtype])
    run_all(np.broadcast_to(col, (5, 33)))  # element stride 0: constant rows


def test_inputs_are_not_modified():
    x = nasty_rows(17, np.float32)
    keep = x.copy()
    w, b = np.ones(17, np.float32), np.zeros(17, np.float32)
    gn.decompose(x)
    gn.rotation(x, x[::-1])
    gn.layer_norm(x, w, b)
    gn.rms_norm(x, w)
    gn.remove_uniform(x)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(w, 1)
    np.testing.assert_array_equal(b, 0)


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(17,), (4, 17), (2, 3, 17), (2, 1, 3, 2, 17), (1, 1), (5, 1)])
def test_nd_shapes(shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    run_all(x)
    dec = gn.decompose(x)
    assert np.asarray(dec.norm).shape == shape[:-1]
    assert np.asarray(gn.rotation(x, x)).shape == shape[:-1]
    # a 3-D batch is the same as its rows stacked in 2-D
    flat = gn.decompose(x.reshape(-1, shape[-1]))
    np.testing.assert_array_equal(np.asarray(dec.angle).ravel(), np.asarray(flat.angle))


@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float64"))
def test_nd_non_contiguous_layouts(simd, dtype):
    """Leading axes that cannot be merged into one row stride: permuted, sliced, reversed."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 4, 5, 6, 9)) * rng.uniform(0.1, 100, (3, 4, 5, 6, 1))
    base = (base + rng.normal(0, 50, (3, 4, 5, 6, 1))).astype(DTYPES[dtype])
    views = {
        "permuted": base.transpose(1, 0, 3, 2, 4),
        "sliced": base[:, ::2, ::-1, 1:5],
        "every axis": base[::-1, 1:, ::2, ::-3, ::2],
        "fortran": np.asfortranarray(base),
        "last axis moved": np.moveaxis(base, 2, -1),
        "size-1 axes": base[:, :1, 2:3, ::-2, :],
    }
    for name, v in views.items():
        try:
            run_all(v, y=v[::-1])
        except AssertionError as e:
            raise AssertionError(f"layout {name}: {e}") from None


@pytest.mark.parametrize("shape", [(0, 7), (2, 0, 7), (0, 0, 1)])
def test_empty_batches(shape):
    x = np.zeros(shape, np.float32)
    dec = gn.decompose(x)
    for f in ("mean", "coef", "norm", "perp_norm", "cos", "angle", "std", "rms"):
        assert np.asarray(getattr(dec, f)).shape == shape[:-1]
    assert dec.undefined_rows == 0
    assert np.asarray(gn.rotation(x, x)).shape == shape[:-1]
    w = np.ones(shape[-1], np.float32)
    for out in (gn.layer_norm(x, w, w), gn.rms_norm(x, w), gn.remove_uniform(x)):
        assert out.shape == shape and out.dtype == np.float32


# ------------------------------------------------------------------ torch


TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64")


def torch_views(t):
    """Contiguous, transposed (last axis strided), sliced, expanded tensors of the same values."""
    import torch

    yield "contiguous", t
    yield "transposed", t.t().contiguous().t()
    wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
    wide[:, ::2] = t
    yield "sliced", wide[:, ::2]
    yield "row-sliced", torch.cat([t, t]).reshape(2, *t.shape)[1]


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_tensors(simd, dtype):
    torch = pytest.importorskip("torch")
    x_np = nasty_rows(33, DTYPES[dtype])
    t = torch.from_numpy(f64(x_np)).to(getattr(torch, dtype))
    assert (t.double().numpy() == f64(x_np)).all()
    w = torch.linspace(0.5, 2, 33, dtype=getattr(torch, dtype))
    b = torch.linspace(-1, 1, 33, dtype=getattr(torch, dtype))
    for name, v in torch_views(t):
        where = f" [torch {dtype} {name}]"
        dec = gn.decompose(v)
        assert_decomposition(dec, slow.decompose(x_np), dtype, where)
        assert_angles(gn.rotation(v, v.flip(0)), slow.rotation(x_np, x_np[::-1]), dtype, where)
        for op, args in (("layer_norm", (w, b)), ("rms_norm", (w,)), ("remove_uniform", ())):
            got = getattr(gn, op)(v, *args)
            assert isinstance(got, torch.Tensor), f"{op}{where}: returned {type(got)}"
            assert got.dtype == v.dtype and got.shape == v.shape, f"{op}{where}"
            np_args = [f64(a) for a in args]
            check_op(op, x_np, *np_args, got=got, where=where)


def test_torch_nd_permuted():
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 3, 5, 16, dtype=torch.float64).to(torch.bfloat16).permute(2, 0, 1, 3)[:, ::2]
    x = t.double().numpy()
    assert_decomposition(gn.decompose(t), slow.decompose(x), "bfloat16", " [torch permuted]")
    got = gn.rms_norm(t)
    assert isinstance(got, torch.Tensor) and got.shape == t.shape and got.dtype == torch.bfloat16
    check_op("rms_norm", x.astype(DTYPES["bfloat16"]), got=got, where=" [torch permuted]")


def test_torch_out():
    torch = pytest.importorskip("torch")
    t = torch.randn(5, 33).to(torch.bfloat16)
    out = torch.full_like(t, float("nan"))
    got = gn.layer_norm(t, out=out)
    assert got is out
    check_op("layer_norm", t.double().numpy().astype(DTYPES["bfloat16"]), got=out, where=" [torch out=]")


def test_torch_3d_and_requires_grad():
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 3, 16, dtype=torch.float32, requires_grad=True)
    x = t.detach().numpy()
    assert_decomposition(gn.decompose(t), slow.decompose(x), "float32")
    got = gn.layer_norm(t)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 3, 16)
    check_op("layer_norm", x, got=got.detach())


# ---------------------------------------------------------------- threads


def as_bytes(r):
    if hasattr(r, "angle"):
        return b"".join(np.ascontiguousarray(np.asarray(getattr(r, f))).tobytes()
                        for f in ("mean", "coef", "norm", "perp_norm", "cos", "angle"))
    return np.ascontiguousarray(f64(r)).tobytes()


@pytest.mark.parametrize("dtype", ("float32", "bfloat16", "float64"))
def test_thread_count_gives_bitwise_identical_results(simd, dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4099, 96)) * rng.uniform(0, 1e3, (4099, 1)) + rng.normal(0, 1e3, (4099, 1)))
    x = x.astype(DTYPES[dtype])
    x[5, 3] = np.nan
    x[7] = 0
    y = x[::-1].copy()
    w, b = np.linspace(0.5, 2, 96).astype(x.dtype), np.linspace(-1, 1, 96).astype(x.dtype)
    calls = {
        "decompose": lambda n: gn.decompose(x, num_threads=n),
        "rotation": lambda n: gn.rotation(x, y, num_threads=n),
        "layer_norm": lambda n: gn.layer_norm(x, w, b, num_threads=n),
        "rms_norm": lambda n: gn.rms_norm(x, w, num_threads=n),
        "remove_uniform": lambda n: gn.remove_uniform(x, num_threads=n),
    }
    for name, call in calls.items():
        one = as_bytes(call(1))
        for n in (2, 3, 8):
            assert as_bytes(call(n)) == one, f"{name}: num_threads={n} differs from 1"


def test_more_threads_than_rows():
    x = nasty_rows(17, np.float32)[:3]
    assert as_bytes(gn.decompose(x, num_threads=8)) == as_bytes(gn.decompose(x, num_threads=1))
    assert as_bytes(gn.layer_norm(x, num_threads=8)) == as_bytes(gn.layer_norm(x, num_threads=1))


def test_concurrent_calls_from_python_threads():
    """The kernels release the GIL; simultaneous calls must not share scratch state."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    inputs = [(rng.standard_normal((300, 8 + 7 * k)) * 10 ** (k % 5) + k).astype(np.float32) for k in range(12)]
    serial = [(as_bytes(gn.decompose(x)), as_bytes(gn.layer_norm(x)), as_bytes(gn.rotation(x, x[::-1])))
              for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            parallel = list(pool.map(
                lambda x: (as_bytes(gn.decompose(x)), as_bytes(gn.layer_norm(x)), as_bytes(gn.rotation(x, x[::-1]))),
                inputs))
            assert parallel == serial


def test_set_num_threads_roundtrip():
    before = gn.get_num_threads()
    try:
        gn.set_num_threads(3)
        assert gn.get_num_threads() == 3
        x = np.random.default_rng(3).standard_normal((500, 40))
        assert as_bytes(gn.decompose(x)) == as_bytes(gn.decompose(x, num_threads=1))
    finally:
        gn.set_num_threads(before)
    assert gn.get_num_threads() == before


# ------------------------------------------------------------------- SIMD


def test_kernel_info():
    info = gn.kernel_info()
    assert "scalar" in info["available"]
    assert set(info["available"]) <= {"scalar", "avx2", "avx512", "avx512_bf16"}
    assert info["simd"] in info["available"]


def test_set_simd_rejects_unknown_and_unsupported_paths():
    before = gn.kernel_info()["simd"]
    with pytest.raises(ValueError):
        _core.set_simd("sse9")
    for path in {"scalar", "avx2", "avx512", "avx512_bf16"} - set(gn.kernel_info()["available"]):
        with pytest.raises(ValueError):
            _core.set_simd(path)
    assert gn.kernel_info()["simd"] == before


def test_paths_agree_with_each_other():
    """Every path against the scalar baseline on the same input, all within the contract."""
    x = nasty_rows(4097, np.float32)
    before = gn.kernel_info()["simd"]
    results = {}
    try:
        for path in gn.kernel_info()["available"]:
            _core.set_simd(path)
            results[path] = gn.decompose(x)
    finally:
        _core.set_simd(before)
    for path, dec in results.items():
        assert_decomposition(dec, slow.decompose(x), "float32", f" [{path}]")


_PROBE = (
    "import numpy as np, geonorm_core as gn\n"
    "x = np.linspace(-3, 5, 3 * 37).reshape(3, 37).astype(np.float32) ** 3\n"
    "print(gn.kernel_info()['simd'])\n"
    "print(repr(np.asarray(gn.decompose(x).perp_norm).tolist()))\n"
)


@pytest.mark.parametrize("path", tuple(gn.kernel_info()["available"]))
def test_env_var_forces_the_path_at_import(path):
    env = dict(os.environ, GEONORM_SIMD=path)
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    active, values = r.stdout.strip().splitlines()[-2:]
    assert active == path
    x = np.linspace(-3, 5, 3 * 37).reshape(3, 37).astype(np.float32) ** 3
    before = gn.kernel_info()["simd"]
    try:
        _core.set_simd(path)
        here = np.asarray(gn.decompose(x).perp_norm).tolist()
    finally:
        _core.set_simd(before)
    assert ast.literal_eval(values) == here  # same path, same bits, in or out of process
