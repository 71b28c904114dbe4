"""token_values_torch (backend="torch") against the core's token_values, within the accuracy contract.

The contract (docs/accuracy.md): angles and rotations within 1e-4 degrees, norms and max|x| within 1e-6
relative, the LN-RMS gap within 1e-6 absolute -- relative where the gap itself exceeds 1 (rows so
small that eps dominates give LN(x) ~ 0 and gaps of ~1e6).  Undefined rows must be NaN in both.
The core runs on every SIMD path this CPU has (the ``simd`` fixture).
"""
import numpy as np
import pytest
from nasty import DTYPES, extreme_rows_f64, nasty_rows, partners

torch = pytest.importorskip("torch")

from geonorm_core import slow  # noqa: E402
from geonorm_core.analysis.measure import QUANTITY_ORDER, quantity_names, token_values  # noqa: E402
from geonorm_core.analysis.measure_torch import token_values_torch  # noqa: E402

pytestmark = pytest.mark.slow   # the torch backend's contract over every dtype and SIMD path: the full tier only

ANGLE_ATOL, REL, GAP_ATOL = 1e-4, 1e-6, 1e-6


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """The same values as a CPU tensor (bf16 through its bit pattern)."""
    a = np.asarray(a)
    if a.dtype == DTYPES["bfloat16"]:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def assert_within_contract(got: np.ndarray, want: dict, names, where: str) -> None:
    assert got.shape == (len(names), next(iter(want.values())).size), where
    for i, q in enumerate(names):
        g, w = got[i], want[q]
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{q}{where}: NaN pattern")
        ok = ~np.isnan(w)
        g, w = g[ok], w[ok]
        if q.startswith(("angle", "rotation")):
            tol = np.full_like(w, ANGLE_ATOL)
        elif q == "ln_rms_gap":
            tol = GAP_ATOL * np.maximum(1.0, np.abs(w))
        else:
            tol = REL * np.abs(w)
        err = np.abs(g - w)
        bad = ~(err <= tol)
        assert not bad.any(), (f"{q}{where}: {bad.sum()} rows off, worst got {g[bad][0]!r} want {w[bad][0]!r}")


def layer_params(d, rng):
    w = rng.uniform(0.5, 2, d).astype(np.float32)
    b = (0.1 * rng.standard_normal(d)).astype(np.float32)
    return {"unit gain": (None, None), "gain": (w, None), "gain and bias": (w, b), "bias": (None, b)}


@pytest.mark.parametrize("d", (1, 3, 17, 64, 576))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_core_on_adversarial_rows(simd, dtype, d):
    rng = np.random.default_rng(d)
    x = nasty_rows(d, DTYPES[dtype])
    if dtype == "float64":
        x = np.concatenate([x, extreme_rows_f64(d)])
    for pname, (w, b) in layer_params(d, rng).items():
        for yname, y in (*partners(x, rng).items(), ("no post", None)):
            for eps in (1e-5, 0.0):
                want = token_values(x, y, gain=w, bias=b, eps=eps)
                got = token_values_torch(as_tensor(x), None if y is None else as_tensor(y), gain=w, bias=b, eps=eps)
                assert got.dtype == torch.float64 and got.device.type == "cpu"
                assert_within_contract(got.numpy(), want, quantity_names(y is not None),
                                       f" [{simd} {dtype} d={d} {pname} post={yname} eps={eps}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_float64_oracle(dtype):
    """Not only the core: each quantity against slow.py's float64 twins, within the contract."""
    rng = np.random.default_rng(1)
    x = nasty_rows(576, DTYPES[dtype])
    y = partners(x, rng)["layer_norm"]
    w = rng.uniform(0.5, 2, 576)
    got = token_values_torch(as_tensor(x), as_tensor(y), gain=w, eps=1e-5).numpy()
    dx, dy = slow.decompose(x), slow.decompose(y)
    want = {"angle_hidden": dx.angle, "norm_hidden": dx.norm, "max_abs_hidden": dx.max_abs,
            "ln_rms_gap": slow.ln_rms_gap(x, w, None, 1e-5), "angle_post": dy.angle, "norm_post": dy.norm,
            "rotation": slow.rotation(x, y)}
    assert_within_contract(got, want, QUANTITY_ORDER, f" [{dtype}]")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_exact_zeros_stay_exact(dtype):
    """Identical and positively proportional pairs rotate by exactly 0, opposite ones by exactly 180;
    constant rows sit at exactly 0 / 180 degrees from 1."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 576, generator=g, dtype=torch.float64) * 3 + 0.5).to(dtype)
    x[0] = 0.1
    x[1] = -3.0
    v = token_values_torch(x, x)
    assert (v[QUANTITY_ORDER.index("rotation")] == 0).all()
    assert (token_values_torch(x, x * 2)[QUANTITY_ORDER.index("rotation")] == 0).all()
    assert (token_values_torch(x, -x)[QUANTITY_ORDER.index("rotation")] == 180).all()
    angle = v[QUANTITY_ORDER.index("angle_hidden")]
    assert angle[0] == 0 and angle[1] == 180
    zero = torch.zeros(2, 64, dtype=dtype)
    z = token_values_torch(zero, zero, bias=np.full(64, 0.5))
    assert torch.isnan(z[QUANTITY_ORDER.index("angle_hidden")]).all()
    assert (z[QUANTITY_ORDER.index("norm_hidden")] == 0).all()
    assert (z[QUANTITY_ORDER.index("ln_rms_gap")] == 0).all()  # LN(0) = RMS(0) + b = b
    assert torch.isnan(z[QUANTITY_ORDER.index("rotation")]).all()


def test_non_finite_rows_are_undefined_as_in_the_core():
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    x[1, 5], x[2, 60], x[3, 0] = np.nan, np.inf, -np.inf
    x[4], x[5] = 0.0, 2.5
    y = x * 2
    y[0, 3] = np.nan
    for eps in (1e-5, 0.0):
        want = token_values(x, y, eps=eps)
        got = token_values_torch(torch.from_numpy(x), torch.from_numpy(y), eps=eps).numpy()
        assert_within_contract(got, want, QUANTITY_ORDER, f" [eps={eps}]")
        assert np.isnan(got[QUANTITY_ORDER.index("rotation"), :4]).all()


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float64 summation order (torch's reductions vectorize by batch shape)."""
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_rows_select_and_chunks_do_not_change_values():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 96, generator=g).to(torch.bfloat16)
    y = torch.randn(3, 40, 96, generator=g).to(torch.bfloat16)
    w = torch.rand(96, generator=g) + 0.5
    full = token_values_torch(x, y, gain=w)
    assert full.shape == (7, 120)
    same(token_values_torch(x, y, gain=w, chunk_elements=96 * 7), full)
    same(token_values_torch(x.transpose(0, 1).contiguous().transpose(0, 1), y, gain=w), full)
    idx = torch.tensor([0, 5, 7, 119, 60], dtype=torch.int64)
    same(token_values_torch(x, y, gain=w, rows=idx), full[:, idx])
    hidden_only = token_values_torch(x, None, gain=w)
    same(hidden_only, full[:4])


def test_bad_arguments_are_clear():
    x = torch.ones(4, 8)
    with pytest.raises(ValueError, match="shape of hidden"):
        token_values_torch(x, torch.ones(4, 9))
    with pytest.raises(TypeError, match="hidden must be a torch tensor"):
        token_values_torch(np.ones((4, 8)), None)
    with pytest.raises(TypeError, match="hidden must be a float16"):
        token_values_torch(torch.ones(4, 8, dtype=torch.int32), None)
    with pytest.raises(ValueError, match="d >= 1"):
        token_values_torch(torch.ones(4, 0), None)
    with pytest.raises(ValueError, match=r"gain must have shape \(8,\)"):
        token_values_torch(x, x, gain=np.ones(7))
    with pytest.raises(ValueError, match="eps must be"):
        token_values_torch(x, x, eps=-1.0)
    with pytest.raises(TypeError, match="rows must be a 1-D int64"):
        token_values_torch(x, x, rows=torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="chunk_elements"):
        token_values_torch(x, x, chunk_elements=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on a GPU machine)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_cuda_matches_the_core(dtype):
    rng = np.random.default_rng(7)
    x = nasty_rows(576, DTYPES[dtype])
    y = partners(x, rng)["layer_norm"]
    w, b = layer_params(576, rng)["gain and bias"]
    want = token_values(x, y, gain=w, bias=b)
    got = token_values_torch(as_tensor(x).cuda(), as_tensor(y).cuda(), gain=w, bias=b)
    assert got.device.type == "cuda"
    assert_within_contract(got.cpu().numpy(), want, QUANTITY_ORDER, f" [cuda {dtype}]")
