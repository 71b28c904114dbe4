"""Hypothesis over shapes, dtypes, layouts and values: never crash, agree with the oracle,
NaN exactly where the oracle has NaN."""

import copy
import json
import os
import random
import shutil
import struct

import numpy as np
import pytest
from deadline import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nasty import DTYPES, assert_angles, assert_decomposition, check_op, f64, layouts

import geonorm_core as gn
from geonorm_core import slow
from geonorm_core.dumps import DumpError, analyze_dump
from geonorm_core.dumps.formats import write_safetensors
from geonorm_core.dumps.schema import manifest_digest

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


# ---- hostile files: a seeded mutator over geonorm's manifests, its shard headers, foreign headers ----
#
# The contract (issue 22): whatever a file holds, analyzing it gives a correct report or a DumpError
# naming the file -- never another exception, a hang, or a different report.  Each case is one seeded
# mutation; GEONORM_FUZZ_CASES sets how many per target (CI: a few seconds; benchmarks/fuzz_files.py
# runs thousands).

CASES = int(os.environ.get("GEONORM_FUZZ_CASES", "25"))
SEED = int(os.environ.get("GEONORM_FUZZ_SEED", "22"))

#: Values a field is replaced with: every JSON type, out-of-range numbers, escaping paths.
VALUES = ["x", "", "F32", "LN5", -1, 0, 1, 7, 2 ** 63, -2 ** 70, 1.5, -0.0, 1e308, True, False, None, [], {},
          ["x"], [1, 2], [-1, 8], {"a": 1}, "../x", "/etc/passwd", "a/../../b", "0" * 64]
#: Raw JSON text put in place of a value: what json.dumps never writes.
RAW = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "[" * 200 + "]" * 200, "1" * 5000, '"\\ud800"']


def leaves(obj, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from leaves(v, path + (k,))


def mutate(doc, r):
    """One seeded mutation of a JSON document; returns its text (maybe not valid JSON)."""
    doc = copy.deepcopy(doc)
    spots = [p for p, _ in leaves(doc) if p]
    path = r.choice(spots)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = r.random()
    marker = "\x00raw\x00"
    raw = None
    if op < 0.15 and isinstance(parent, dict):
        del parent[key]
    elif op < 0.25 and isinstance(parent, dict):
        parent[key + r.choice(["_", "x", "s"])] = parent.pop(key)
    elif op < 0.40:
        parent[key] = marker
        raw = r.choice(RAW)
    elif op < 0.55 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = r.choice([parent[key] + 1, parent[key] - 1, -parent[key], parent[key] * 2, 0])
    else:
        parent[key] = copy.deepcopy(r.choice(VALUES))
    text = json.dumps(doc)
    return text.replace(json.dumps(marker), raw) if raw is not None else text


def numbers(report):
    """What a report measured, without where it came from (the source path is in its meta)."""
    return [(s.tokens, {q: v for q, v in s.to_dict()["quantities"].items()}) for s in report.sites.values()]


def check(target, path, run, same):
    """Run one case: a DumpError naming a file under ``path``, or a report ``same`` accepts."""
    with deadline():
        try:
            report = run()
        except DumpError as err:
            assert err.path.startswith(str(path)), (target, err)
            assert "\n" not in str(err), (target, err)
            return "error"
    assert same(report), f"{target}: a different report"
    return "report"


@pytest.fixture(scope="module")
def fuzz_dump(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from tiny_models import tiny

    from geonorm_core.dumps.writing import dump

    g = torch.Generator().manual_seed(0)
    bs = [{"input_ids": torch.randint(0, 97, (2, 8), generator=g), "attention_mask": torch.ones(2, 8,
          dtype=torch.long)} for _ in range(3)]
    root = tmp_path_factory.mktemp("fuzz") / "d"
    dump(tiny("llama"), bs, root, shard_rows=16)
    return root, numbers(analyze_dump(root, num_threads=1))


def fresh_copy(src, tmp_path, i):
    dst = tmp_path / f"c{i}"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "resealed"])
def test_hostile_manifests(fuzz_dump, tmp_path, reseal):
    """An edited manifest is refused (its digest); a resealed one -- as if geonorm wrote it -- goes
    through the schema: a DumpError or a report, never another exception."""
    root, want = fuzz_dump
    man = json.loads((root / "manifest.json").read_text())
    r = random.Random(SEED + reseal)
    outcomes = []
    for i in range(CASES):
        text = mutate(man, r)
        if reseal:
            try:
                doc = json.loads(text)
                doc["manifest_sha256"] = manifest_digest(doc)
                text = json.dumps(doc)
            except (ValueError, RecursionError, TypeError, AttributeError):
                pass  # not an object of JSON: nothing to reseal
        case = fresh_copy(root, tmp_path, i)
        (case / "manifest.json").write_text(text)
        outcomes.append(check("manifest", case, lambda case=case: analyze_dump(case, num_threads=1),
                              lambda rep: reseal or numbers(rep) == want))
    assert "error" in outcomes


def rewrite_header(path, r):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    text = mutate(header, r).encode()
    if r.random() < 0.5 and len(text) <= n:  # keep the size: only the header differs
        text += b" " * (n - len(text))
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def test_hostile_shard_headers(fuzz_dump, tmp_path):
    root, want = fuzz_dump
    r = random.Random(SEED + 2)
    outcomes = []
    for i in range(CASES):
        case = fresh_copy(root, tmp_path, i)
        shard = r.choice(sorted(p for p in case.rglob("shard-*.safetensors")))
        rewrite_header(shard, r)
        outcomes.append(check("shard", case, lambda case=case: analyze_dump(case, num_threads=1),
                              lambda rep: numbers(rep) == want))
        check("shard --verify size", case, lambda case=case: analyze_dump(case, num_threads=1, verify="size"),
              lambda rep: True)  # size: headers and sizes only, so any report the checks let through
    assert "error" in outcomes


def test_hostile_foreign_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(SEED)
    base = tmp_path / "base" / "x.safetensors"
    base.parent.mkdir()
    write_safetensors(base, {"hidden": [rng.normal(size=(6, 8)).astype(np.float32)],
                             "post": [rng.normal(size=(6, 8)).astype(np.float32)]})
    r = random.Random(SEED + 3)
    outcomes = []
    for i in range(CASES):
        case = tmp_path / f"c{i}" / "x.safetensors"
        case.parent.mkdir()
        shutil.copy(base, case)
        rewrite_header(case, r)

        def oracle(rep, case=case, i=i):
            arrays = st.load_file(str(case))  # we accepted it: the format's own reader must too
            clean = tmp_path / f"o{i}" / "x.safetensors"
            clean.parent.mkdir()
            write_safetensors(clean, {k: [np.ascontiguousarray(v).reshape(-1, v.shape[-1])]
                                      for k, v in arrays.items()})
            return numbers(rep) == numbers(analyze_dump(clean, num_threads=1))

        outcomes.append(check("safetensors", case, lambda case=case: analyze_dump(case, num_threads=1), oracle))
    assert "error" in outcomes


NPY_SHAPES = ["(6, 8)", "(-6, 8)", "(2, 3, 8)", "(-2, -3, 8)", "(48,)", "(6, 8.0)", "(6, '8')", "(0, 8)",
              "(6, 0)", "(7, 8)", "(3, 8)", "(6, 8, 1)", "(1, 6, 8)", "()", "(2**40, 8)", "[6, 8]"]
NPY_DESCR = ["'<f4'", "'>f4'", "'<f2'", "'<f8'", "'<i4'", "'|O'", "'<f16'", "'V4'", "[('a', '<f4')]", "'f4'"]


def test_hostile_foreign_npy(tmp_path):
    rng = np.random.default_rng(SEED)
    payload = rng.normal(size=(6, 8)).astype(np.float32).tobytes()
    r = random.Random(SEED + 4)
    outcomes = []
    for i in range(CASES):
        shape, descr = r.choice(NPY_SHAPES), r.choice(NPY_DESCR)
        fortran = r.choice(["False", "False", "True", "0", "'no'"])
        header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}".encode("latin1")
        header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
        case = tmp_path / f"c{i}" / "x.npy"
        case.parent.mkdir()
        case.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)

        def oracle(rep, case=case, i=i):
            a = np.load(case, mmap_mode="r")  # we accepted it: NumPy must read it too
            clean = tmp_path / f"o{i}" / "x.npy"
            clean.parent.mkdir()
            np.save(clean, np.ascontiguousarray(a))
            return numbers(rep) == numbers(analyze_dump(clean, num_threads=1))

        outcomes.append(check("npy", case, lambda case=case: analyze_dump(case, num_threads=1), oracle))
    assert "error" in outcomes and "report" in outcomes or CASES < 10
