"""Hypothesis over shapes, dtypes, layouts and values: never crash, agree with the oracle,
NaN exactly where the oracle has NaN."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nasty import DTYPES, assert_angles, assert_decomposition, check_op, f64, layouts

import geonorm_core as gn
from geonorm_core import slow

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Largest magnitude drawn per dtype: the dtype's whole range, less a margin so that
# x - mean (remove_uniform) and ||x|| themselves stay representable.
LIMIT = {"float16": 1e4, "bfloat16": 1e30, "float32": 1e30, "float64": 1e300}
WIDTH = {"float16": 16, "bfloat16": 32, "float32": 32, "float64": 64}
SPECIALS = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-40, 5e-324, 1e-310, 65504.0, 1e4, -1e5]


@st.composite
def batches(draw, nonfinite=True):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    d = draw(st.one_of(st.integers(1, 40), st.sampled_from([63, 64, 65, 127, 129, 576, 4097])))
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=2 if d < 1000 else 1)))
    lim = float({16: np.float16, 32: np.float32, 64: np.float64}[WIDTH[dtype]](LIMIT[dtype]))
    specials = [v for v in SPECIALS if abs(v) <= lim]
    elements = st.one_of(
        st.floats(-lim, lim, width=WIDTH[dtype]),
        st.floats(-10, 10, width=WIDTH[dtype]),
        st.sampled_from(specials),
    )
    v = draw(hnp.arrays(np.float64, lead + (d,), elements=elements))
    offset = draw(st.sampled_from([0.0, 0.0, 0.0, 1e3, -7e3, 1e5 if lim > 1e5 else 3e3]))
    v = v + offset  # mean-dominated rows
    if nonfinite and v.size and draw(st.booleans()):
        flat = v.reshape(-1)
        for i in draw(st.lists(st.integers(0, flat.size - 1), max_size=3)):
            flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with np.errstate(over="ignore"):
        x = v.astype(DTYPES[dtype])
    x = np.where(np.isinf(f64(x)) & np.isfinite(v), 0, x).astype(DTYPES[dtype])  # cast overflow
    layout = draw(st.sampled_from(["contiguous", "fortran", "strided", "negative", "big-endian",
                                   "misaligned", "read-only"]))
    views = dict(layouts(x))
    return dtype, views.get(layout, x)


@FUZZ
@given(case=batches())
def test_decompose(simd, case):
    dtype, x = case
    assert_decomposition(gn.decompose(x), slow.decompose(x), dtype, f" [{simd} {dtype} {x.shape}]")


@FUZZ
@given(case=batches(), how=st.sampled_from(["negated", "shifted", "reversed", "self"]), data=st.data())
def test_rotation(simd, case, how, data):
    dtype, x = case
    if how == "negated":
        y = -x
    elif how == "shifted":
        y = (f64(x) + data.draw(st.sampled_from([1e-3, 1.0, -50.0]))).astype(x.dtype)
    elif how == "reversed":
        y = x[..., ::-1]
    else:
        y = x
    with np.errstate(over="ignore"):
        got = gn.rotation(x, y)
    assert_angles(got, slow.rotation(x, y), dtype, f" [{simd} {dtype} {x.shape} {how}]")


@FUZZ
@given(case=batches(), op=st.sampled_from(["layer_norm", "rms_norm", "remove_uniform"]),
       eps=st.sampled_from([1e-5, 1e-2, 0.0]), affine=st.booleans(), data=st.data())
def test_norm_ops(simd, case, op, eps, affine, data):
    dtype, x = case
    if eps == 0 and dtype == "float64":
        eps = 1e-5  # a float64 constant row's rounded mean makes eps = 0 ill-posed (0/0 vs noise)
    d = x.shape[-1]
    w = b = None
    if affine:
        w = data.draw(hnp.arrays(np.float64, (d,), elements=st.floats(-3, 3))).astype(x.dtype)
        b = data.draw(hnp.arrays(np.float64, (d,), elements=st.floats(-3, 3))).astype(x.dtype)
    where = f" [{simd} {dtype} {x.shape} eps={eps} affine={affine}]"
    if op == "layer_norm":
        check_op(op, x, w, b, eps=eps, where=where)
    elif op == "rms_norm":
        check_op(op, x, w, eps=eps, where=where)
    else:
        check_op(op, x, where=where)
