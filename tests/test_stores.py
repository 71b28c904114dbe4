"""Activation stores written by the libraries that write them in real life give the .npy report.

SAELens's cache is written with ``datasets`` and the exact ``Features`` SAELens's
``CacheActivationsRunner`` builds (``Array2D(shape=(context_size, d_in), dtype)`` per hook name plus
``token_ids = Sequence(Value("int32"), length=context_size)``, ``Dataset.from_dict`` +
``save_to_disk``): installing sae-lens itself would replace this environment's torch (see
docs/stores.md).  HDF5 is written with h5py, zarr with zarr (formats 2 and 3).
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest

import geonorm_core as gn
from geonorm_core import cli
from geonorm_core.dumps.shards import DumpError, FileShard
from geonorm_core.dumps.stores import UnknownSiteError
from geonorm_core.dumps.stores.columns import ConcatShard
from geonorm_core.sources.hook_names import place_hook

datasets = pytest.importorskip("datasets")  # requirements-test.txt installs all four: CI skips none
h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")
pa = pytest.importorskip("pyarrow")

CTX, D, N = 8, 16, 30
BLOCK = 50  # rows per block: blocks cross record batches, files and chunks


def numbers(site) -> str:
    """A site's statistics (everything but its metadata), exactly, as JSON."""
    return json.dumps({k: v for k, v in site.to_dict().items() if k != "meta"}, sort_keys=True)


def npy_report(tmp_path, rows: np.ndarray, name: str):
    f = tmp_path / f"{name.replace('/', '_')}.npy"
    np.save(f, rows.reshape(-1, rows.shape[-1]))
    return next(iter(gn.analyze_dump(f, block_rows=BLOCK).sites.values()))


def assert_npy_report(tmp_path, report, arrays: dict) -> None:
    for name, rows in arrays.items():
        assert numbers(report.sites[name]) == numbers(npy_report(tmp_path, rows, name)), name


@pytest.fixture
def acts(rng):
    """Hidden states of three hooks, (sequences, positions, d), as a model would cache them."""
    return {
        f"blocks.{i}.hook_resid_pre": (rng.standard_normal((N, CTX, D)) * (1 + i) + 0.2 * i).astype(
            np.float32
        )
        for i in (2, 0, 1)
    }


def saelens_cache(path, acts, tokens, shards=3):
    """A cache as SAELens's CacheActivationsRunner writes it (its Features, from_dict, save_to_disk)."""
    from datasets import Array2D, Dataset, Features, Sequence, Value

    features = Features(
        {
            **{h: Array2D(shape=(CTX, D), dtype="float32") for h in acts},
            "token_ids": Sequence(Value(dtype="int32"), length=CTX),
        }
    )
    ds = Dataset.from_dict({**acts, "token_ids": tokens}, features=features)
    ds.save_to_disk(str(path), num_shards=shards)
    return ds


# ---------------------------------------------------------------------------------------- the stores


def test_a_saelens_cache_gives_the_npy_report_ordered_by_layer(tmp_path, acts, rng):
    tokens = rng.integers(0, 50000, (N, CTX)).astype(np.int32)
    saelens_cache(tmp_path / "cache", acts, tokens)
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 3
    report = gn.analyze_dump(tmp_path / "cache", block_rows=BLOCK)
    assert list(report.sites) == [
        f"blocks.{i}.hook_resid_pre" for i in range(3)
    ]  # by layer, not column order
    assert [(s.layer, s.role) for s in report.sites.values()] == [(0, "LN1"), (1, "LN1"), (2, "LN1")]
    assert report.meta["left_out"] == ["token_ids: holds int32 values, not float"]
    assert report.tokens == N * CTX
    assert_npy_report(tmp_path, report, acts)
    assert [r["layer"] for r in report.layers()] == [0, 1, 2]  # hidden-side table, no post columns
    assert report.layers()[0]["post1_angle"] is None


def test_the_arrow_rows_are_memory_mapped_a_block_at_a_time(tmp_path, acts, rng):
    saelens_cache(tmp_path / "cache", acts, rng.integers(0, 9, (N, CTX)).astype(np.int32))
    (site,) = gn.open_activations(tmp_path / "cache", sites=["blocks.0.hook_resid_pre"])
    shard = site.hidden[0]
    assert isinstance(shard, ConcatShard) and all(isinstance(p, FileShard) for p in shard.parts)
    assert len(shard.parts) == 3
    inside = shard.read(1, 5)
    assert isinstance(inside.base, memoryview) or not inside.flags.owndata  # a view of the map, no copy
    np.testing.assert_array_equal(shard.read(0, shard.rows), acts["blocks.0.hook_resid_pre"].reshape(-1, D))


def test_parquet_as_pushed_to_the_hub_gives_the_npy_report(tmp_path, acts, rng):
    ds = saelens_cache(tmp_path / "cache", acts, rng.integers(0, 9, (N, CTX)).astype(np.int32))
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for i in range(2):  # the Hub's layout: data/train-0000i-of-00002.parquet
        ds.shard(2, i, contiguous=True).to_parquet(
            str(tmp_path / "pq" / "data" / f"train-{i:05d}-of-00002.parquet"), batch_size=7
        )
    report = gn.analyze_dump(tmp_path / "pq", block_rows=BLOCK)
    assert report.meta["format"] == "arrow" and report.meta["files"] == 2
    assert_npy_report(tmp_path, report, acts)


@pytest.mark.parametrize("fmt", ["stream", "file"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_arrow_files_of_vector_columns_give_the_npy_report(tmp_path, rng, fmt, dtype):
    """Plain pyarrow IPC files: fixed-size lists and variable lists of one length, fp16/fp32/fp64."""
    x = (rng.standard_normal((300, D)) + 0.5).astype(dtype)
    y = (rng.standard_normal((300, D)) * 3).astype(dtype)
    (tmp_path / "store").mkdir()
    for k, (a, b) in enumerate(((0, 120), (120, 300))):
        fixed = pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].reshape(-1)), D)
        varlen = pa.array(list(y[a:b]), type=pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))
        table = pa.table(
            {
                "resid": fixed,
                "mlp_out": varlen,
                "label": pa.array(range(a, b)),
                "loss": pa.array(np.arange(a, b, dtype=np.float32)),
            }
        )
        new = pa.ipc.new_stream if fmt == "stream" else pa.ipc.new_file
        with new(str(tmp_path / "store" / f"part-{k}.arrow"), table.schema) as w:
            for batch in table.to_batches(max_chunksize=45):
                w.write_batch(batch)
    report = gn.analyze_dump(tmp_path / "store", block_rows=BLOCK)
    assert list(report.sites) == ["resid", "mlp_out"]  # names geonorm does not know keep their order
    assert report.meta["left_out"] == [
        "label: holds int64 values, not float",
        "loss: holds one float per row, not vectors",
    ]
    assert_npy_report(tmp_path, report, {"resid": x, "mlp_out": y})


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "gzip", "float16-3d"])
def test_hdf5_datasets_give_the_npy_report(tmp_path, acts, layout):
    arrays = {
        k: v.reshape(-1, D) if layout != "float16-3d" else v.astype(np.float16) for k, v in acts.items()
    }
    with h5py.File(tmp_path / "acts.h5", "w") as f:
        for k, v in arrays.items():
            kw = {
                "contiguous": {},
                "chunked": {"chunks": (13,) + v.shape[1:]},
                "gzip": {"chunks": (13,) + v.shape[1:], "compression": "gzip", "shuffle": True},
                "float16-3d": {"chunks": (2, CTX, D), "compression": "lzf"},
            }[layout]
            f.create_dataset(f"run1/{k}", data=v, **kw)
        f.create_dataset("run1/positions", data=np.arange(10.0))  # 1-D: left out, named
        f.create_dataset("run1/ids", data=np.zeros((4, 4), np.int64))
    report = gn.analyze_dump(tmp_path / "acts.h5", block_rows=BLOCK)
    assert sorted(report.meta["left_out"]) == [
        "run1/ids: holds int64, not float16/32/64",
        "run1/positions: is 1-D (10,); geonorm reads 2-D (rows, d) and 3-D (sequences, positions, d)",
    ]
    assert_npy_report(tmp_path, report, {f"run1/{k}": v for k, v in arrays.items()})
    site = gn.open_activations(tmp_path / "acts.h5", sites=["run1/blocks.0.hook_resid_pre"])[0]
    assert isinstance(site.hidden[0].parts[0], FileShard) == (layout == "contiguous")  # mapped when it can be


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_zarr_arrays_give_the_npy_report(tmp_path, acts, fmt, compressed):
    g = zarr.open_group(str(tmp_path / "acts.zarr"), mode="w", zarr_format=fmt)
    for k, v in acts.items():
        g.create_array(f"layers/{k}", data=v, chunks=(4, CTX, D), compressors="auto" if compressed else None)
    g.create_array("tokens", data=np.zeros((N, CTX), np.int32))
    report = gn.analyze_dump(tmp_path / "acts.zarr", block_rows=BLOCK)
    assert report.meta["store"] == f"zarr v{fmt}"
    assert report.meta["left_out"] == ["tokens: holds int32, not float16/32/64"]
    assert list(report.sites) == [f"layers/blocks.{i}.hook_resid_pre" for i in range(3)]  # natural order
    assert_npy_report(tmp_path, report, {f"layers/{k}": v for k, v in acts.items()})


def test_a_store_agrees_with_a_float64_numpy_reference(tmp_path, acts):
    """The accuracy contract: angles within 1e-4 degrees, norms within 1e-6 relative, gap within 1e-6."""
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=acts["blocks.1.hook_resid_pre"], chunks=(3, CTX, D), compression="gzip")
    site = gn.analyze_dump(tmp_path / "a.h5").sites["x"]
    x = acts["blocks.1.hook_resid_pre"].reshape(-1, D).astype(np.float64)
    norm = np.linalg.norm(x, axis=1)
    angle = np.degrees(np.arccos(np.clip(x.sum(1) / (np.sqrt(D) * norm), -1, 1)))
    assert abs(site.angle_hidden.mean - angle.mean()) < 1e-4
    assert abs(site.norm_hidden.mean - norm.mean()) < 1e-6 * norm.mean()
    assert abs(site.max_abs_hidden.max - np.abs(x).max()) < 1e-6 * np.abs(x).max()
    c = x - x.mean(1, keepdims=True)
    ln = c / np.sqrt((c * c).mean(1, keepdims=True) + 1e-5)
    rms = x / np.sqrt((x * x).mean(1, keepdims=True) + 1e-5)
    gap = np.linalg.norm(ln - rms, axis=1) / np.linalg.norm(ln, axis=1)
    assert abs(site.ln_rms_gap.mean - gap.mean()) < 1e-6


@pytest.mark.parametrize("kind", ["arrow", "parquet", "hdf5", "zarr"])
def test_dask_splits_a_store_and_gives_the_same_report(tmp_path, acts, rng, kind):
    pytest.importorskip("dask")
    if kind in ("arrow", "parquet"):
        ds = saelens_cache(tmp_path / "s", acts, rng.integers(0, 9, (N, CTX)).astype(np.int32))
        if kind == "parquet":
            ds.to_parquet(str(tmp_path / "s.parquet"), batch_size=7)
        path = tmp_path / ("s" if kind == "arrow" else "s.parquet")
    elif kind == "hdf5":
        path = tmp_path / "s.h5"
        with h5py.File(path, "w") as f:
            for k, v in acts.items():
                f.create_dataset(k, data=v, chunks=(5, CTX, D), compression="gzip")
    else:
        path = tmp_path / "s.zarr"
        g = zarr.open_group(str(path), mode="w")
        for k, v in acts.items():
            g.create_array(k, data=v, chunks=(5, CTX, D))
    sites = gn.open_activations(path)
    assert pickle.loads(pickle.dumps(sites[0].hidden[0])).read(0, 3).shape == (3, D)  # travels to workers
    one = gn.analyze_dump(path, block_rows=BLOCK)
    from geonorm_core.dumps.dask import analyze_sites

    many = analyze_sites(sites, scheduler="threads", block_rows=BLOCK, task_bytes=BLOCK * D * 4 * 2)
    assert list(many.sites) == list(one.sites)
    for name in one.sites:
        assert numbers(many.sites[name]) == numbers(one.sites[name])
    assert gn.analyze_dump(path, block_rows=BLOCK, scheduler="threads").sites.keys() == one.sites.keys()


# ---------------------------------------------------------------------------------------- hook names


def test_hook_names_are_placed_in_layer_and_role():
    assert place_hook("blocks.3.hook_resid_pre") == place_hook("blocks.3.ln1.hook_in").__class__(
        3, "LN1", place_hook("blocks.3.hook_resid_pre").order
    )
    assert (place_hook("blocks.3.hook_resid_mid").layer, place_hook("blocks.3.hook_resid_mid").role) == (
        3,
        "LN2",
    )
    post = place_hook("blocks.3.hook_resid_post")
    assert (post.layer, post.role) == (4, "LN1")
    last = place_hook("blocks.3.hook_resid_post", n_layers=4)
    assert (last.layer, last.role) == (None, "final")
    assert place_hook("blocks.3.hook_mlp_out").role is None and place_hook("my_layer") is None
    names = [
        "ln_final.hook_normalized",
        "blocks.10.hook_resid_pre",
        "blocks.2.hook_resid_post",
        "blocks.2.hook_resid_mid",
        "blocks.2.hook_resid_pre",
        "hook_embed",
    ]
    assert sorted(names, key=lambda n: place_hook(n).order) == [
        "hook_embed",
        "blocks.2.hook_resid_pre",
        "blocks.2.hook_resid_mid",
        "blocks.2.hook_resid_post",
        "blocks.10.hook_resid_pre",
        "ln_final.hook_normalized",
    ]


def test_a_norms_input_and_output_hooks_pair_into_one_site(tmp_path, rng):
    x = rng.standard_normal((64, D)).astype(np.float32)
    y = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["blocks.0.ln1.hook_in"], f["blocks.0.ln1.hook_out"] = x, y
        f["blocks.0.hook_resid_mid"] = x
    report = gn.analyze_dump(tmp_path / "a.h5")
    assert list(report.sites) == ["blocks.0.ln1", "blocks.0.hook_resid_mid"]
    ln1 = report.sites["blocks.0.ln1"]
    assert (ln1.layer, ln1.role) == (0, "LN1") and ln1.rotation.count == 64
    assert abs(ln1.angle_post.mean - 90) < 1e-3  # LayerNorm's output is orthogonal to 1


def test_a_model_gives_the_norms_gain_and_bias(tmp_path):
    """Rows cached at the norms' inputs of a tiny GPT-2 + the model: the live run's LN-RMS gap."""
    from tiny_models import tiny

    model = tiny("gpt2")
    import torch

    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(0))
    live = gn.analyze(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    hidden = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: hidden.__setitem__(i, args[0].numpy().copy()))
        for i, m in enumerate(b.ln_1 for b in model.transformer.h)
    ]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    with h5py.File(tmp_path / "tl.h5", "w") as f:
        for i, v in hidden.items():
            f[f"blocks.{i}.hook_resid_pre"] = v
    plain = gn.analyze_dump(tmp_path / "tl.h5")
    withm = gn.analyze_dump(tmp_path / "tl.h5", model=model)
    for i in range(2):
        ref = live.sites[f"transformer.h.{i}.ln_1"]
        got = withm.sites[f"blocks.{i}.hook_resid_pre"]
        assert got.meta["norm"] == f"transformer.h.{i}.ln_1" and got.meta["has_bias"]
        assert abs(got.ln_rms_gap.mean - ref.ln_rms_gap.mean) < 1e-6
        assert abs(got.angle_hidden.mean - ref.angle_hidden.mean) < 1e-4
        assert abs(plain.sites[f"blocks.{i}.hook_resid_pre"].ln_rms_gap.mean - ref.ln_rms_gap.mean) > 1e-5
    with pytest.raises(ValueError, match="d=64.*d=48"):
        gn.analyze_dump(tmp_path / "tl.h5", model=tiny("llama"))


# ---------------------------------------------------------------------------------------- bad input


def test_bad_columns_and_lists_are_one_line_errors(tmp_path, rng):
    table = pa.table({"ids": pa.array([[1, 2]] * 4), "ragged": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]] * 2)})
    with pa.ipc.new_stream(str(tmp_path / "t.arrow"), table.schema) as w:
        w.write_table(table)
    with pytest.raises(DumpError, match=r"t\.arrow: 'ids' holds int64 values, not float"):
        gn.open_activations(tmp_path / "t.arrow", sites=["ids"])
    with pytest.raises(DumpError, match=r"t\.arrow: column 'ragged' is ragged: lists of 2 and 3 values"):
        gn.open_activations(tmp_path / "t.arrow")
    with pytest.raises(UnknownSiteError, match="has no 'nope'"):
        gn.open_activations(tmp_path / "t.arrow", sites=["nope"])


def test_a_store_with_no_float_data_says_what_it_holds(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["ids"] = np.zeros((3, 4), np.int32)
        f["vec"] = np.zeros(4)
    with pytest.raises(
        DumpError, match=r"a\.h5: holds no float data of 2 or 3 dimensions \('ids' holds int32"
    ):
        gn.open_activations(tmp_path / "a.h5")
    with pytest.raises(DumpError, match=r"'vec' is 1-D"):
        gn.open_activations(tmp_path / "a.h5", sites=["vec"])


def test_truncated_files_are_named(tmp_path, acts, rng):
    saelens_cache(tmp_path / "c", acts, rng.integers(0, 9, (N, CTX)).astype(np.int32), shards=1)
    (arrow,) = (tmp_path / "c").glob("*.arrow")
    os.truncate(arrow, arrow.stat().st_size // 2)
    with pytest.raises(DumpError, match=f"{arrow.name}: is not a readable Arrow/parquet file"):
        gn.open_activations(tmp_path / "c")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.ones((4000, D), np.float32)
    os.truncate(tmp_path / "a.h5", (tmp_path / "a.h5").stat().st_size // 2)
    with pytest.raises(DumpError, match=r"a\.h5: truncated|a\.h5: is not a readable HDF5"):
        gn.analyze_dump(tmp_path / "a.h5")


def test_an_unreadable_zarr_chunk_is_named(tmp_path, acts):
    g = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=3)
    g.create_array("x", data=acts["blocks.0.hook_resid_pre"], chunks=(4, CTX, D))
    chunk = next(p for p in (tmp_path / "z.zarr" / "x").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not a zstd frame" * 3)
    with pytest.raises(DumpError, match=r"z\.zarr: array 'x', rows \[.*\): a chunk cannot be read"):
        gn.analyze_dump(tmp_path / "z.zarr")


def test_the_command_line_reads_stores_and_fails_in_one_line(tmp_path, acts, rng, capsys):
    saelens_cache(tmp_path / "c", acts, rng.integers(0, 9, (N, CTX)).astype(np.int32))
    out = str(tmp_path / "rep")
    assert (
        cli.main(["analyze-dump", str(tmp_path / "c"), "--sites", "blocks.1.hook_resid_pre", "--out", out])
        == 0
    )
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert list(saved["sites"]) == ["blocks.1.hook_resid_pre"]
    assert "token_ids: holds int32 values, not float" in saved["meta"]["left_out"]
    capsys.readouterr()
    for argv, code, text in (
        ([str(tmp_path / "c"), "--sites", "blocks.9.hook_resid_pre"], 2, "has no"),
        ([str(tmp_path / "c"), "--sites", "token_ids"], 1, "not float"),
    ):
        assert cli.main(["analyze-dump", *argv, "--out", out]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("geonorm analyze-dump: error: ") and text in err[0], err


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch, capsys):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.ones((4, D), np.float32)
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'needs the h5py package: pip install "geonorm\[stores\]"'):
        gn.open_activations(tmp_path / "a.h5")
    assert cli.main(["analyze-dump", str(tmp_path / "a.h5"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "geonorm[stores]" in err[0]


def test_the_command_line_takes_the_model_a_store_came_from(tmp_path, capsys):
    from tiny_models import tiny

    tiny("gpt2").save_pretrained(tmp_path / "gpt2")
    rows = np.random.default_rng(1).standard_normal((2, 40, 48)).astype(np.float32)
    with h5py.File(tmp_path / "tl.h5", "w") as f:
        f["blocks.1.hook_resid_mid"], f["blocks.1.hook_resid_post"] = rows, rows[..., :32]
    out = str(tmp_path / "rep")
    assert (
        cli.main(
            [
                "analyze-dump",
                str(tmp_path / "tl.h5"),
                "--model",
                str(tmp_path / "gpt2"),
                "--sites",
                "blocks.1.hook_resid_mid",
                "--out",
                out,
            ]
        )
        == 0
    )
    site = json.loads((tmp_path / "rep" / "report.json").read_text())["sites"]["blocks.1.hook_resid_mid"]
    assert site["meta"]["norm"] == "transformer.h.1.ln_2" and site["meta"]["has_gain"]
    capsys.readouterr()
    # the last block's resid_post feeds the final norm (d=48), and these rows have d=32
    assert (
        cli.main(["analyze-dump", str(tmp_path / "tl.h5"), "--model", str(tmp_path / "gpt2"), "--out", out])
        == 1
    )
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and "Loading weights" not in line
    ]
    assert len(err) == 1 and "transformer.ln_f normalizes d=48" in err[0] and "d=32" in err[0], err


def test_sites_selects_among_any_sources_arrays(tmp_path, rng):
    np.savez(tmp_path / "a.npz", first=rng.standard_normal((5, D)), second=rng.standard_normal((7, D)))
    (site,) = gn.open_activations(tmp_path / "a.npz", sites=["second"])
    assert (site.name, site.rows) == ("second", 7)
    with pytest.raises(UnknownSiteError, match="has no site 'third'; it has 'first', 'second'"):
        gn.analyze_dump(tmp_path / "a.npz", sites=["third"])
