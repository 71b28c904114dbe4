"""geonorm_core.dumps.dask: a 2-worker LocalCluster gives bitwise the single-process numbers.

"Bitwise": ``to_dict()`` of the SiteStats / Report compared with ==.  The single-process run is
``analyze_dump`` without a scheduler for dumps, and a loop of ``SiteStats.update`` over the
blocks for a dask array.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import geonorm_core as gn
from geonorm_core.analysis.accumulate import QUANTITY_NAMES, SiteStats
from geonorm_core.analysis.measure import token_values
from geonorm_core.dumps import dask as gd
from geonorm_core.dumps.reading import analyze_dump, open_activations
from geonorm_core.dumps.shards import HIDDEN_QUANTITIES, DumpError, FileShard
from geonorm_core.dumps.writing import DumpWriter

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


def sent(client) -> int:
    """Bytes the workers have sent (to each other and to the client) so far."""
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def hidden_states(rng, n: int, d: int, dtype) -> np.ndarray:
    """Rows with a large component along 1 (the hard case for moments), a few massive entries, a zero row."""
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 3.0, (n, 1)) + rng.uniform(-40, 40, (n, 1))
    x[rng.integers(0, n, 5), rng.integers(0, d, 5)] = 3e3
    x[n // 3] = 0.0
    return x.astype(dtype)


def post_of(x: np.ndarray, gain, bias, eps: float) -> np.ndarray:
    return gn.layer_norm(x.astype(np.float32), gain, bias, eps).astype(x.dtype)


def same(a, b) -> None:
    assert a.to_dict() == b.to_dict()


# ------------------------------------------------------------------ (a) a dask array over .npy shards


def npy_shard(path: Path, dtype) -> FileShard:
    """The rows of a .npy file as the dump reader's FileShard (bf16 is stored as its uint16 bits)."""
    a = np.load(path, mmap_mode="r")
    return FileShard(path, a.offset, a.shape[0], a.shape[1], dtype)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=["fp32", "bf16"])
def test_npy_stack_on_cluster_is_the_single_process_loop(tmp_path, client, dtype):
    rng = np.random.default_rng(1)
    d, eps, block_rows, rows = 96, 1e-5, 256, [900, 1100, 600]
    gain, bias = rng.uniform(0.5, 2.0, d), rng.normal(0, 0.3, d)
    x = hidden_states(rng, sum(rows), d, dtype)
    x[11] = np.nan  # a NaN row is counted, not dropped
    y = post_of(x, gain, bias, eps)
    for i, (a, n) in enumerate(zip(np.cumsum([0] + rows), rows)):
        for side, arr in (("h", x), ("p", y)):
            part = arr[a:a + n]
            np.save(tmp_path / f"{side}{i}.npy", part.view(np.uint16) if dtype == BF16 else part)
    hs = [tmp_path / f"h{i}.npy" for i in range(len(rows))]
    ps = [tmp_path / f"p{i}.npy" for i in range(len(rows))]
    meta = {"name": "layers.3.ln_1", "layer": 3, "role": "LN1", "d": d}

    def run(scheduler):  # a dask array over the shards, chunks of block_rows read where the task runs
        return gd.analyze_array(gd.shards_to_array([npy_shard(p, dtype) for p in hs], block_rows),
                                gd.shards_to_array([npy_shard(p, dtype) for p in ps], block_rows),
                                meta=meta, gain=gain, bias=bias, eps=eps, bins=90, split_every=3,
                                scheduler=scheduler)

    got = run(client)
    ref = SiteStats(meta, bins=90)  # the single-process loop over the same blocks, no Dask
    for a0, n in zip(np.cumsum([0] + rows), rows):
        for a in range(0, n, block_rows):
            b = min(a + block_rows, n)
            ref.update(**token_values(x[a0 + a:a0 + b], y[a0 + a:a0 + b], gain=gain, bias=bias, eps=eps))
    same(got, ref)
    assert got.tokens == sum(rows) and got.angle_hidden.moments.nan_count == 2  # the zero row and the NaN row
    same(run("threads"), ref)


# ------------------------------------------------------------------ (b) dumps: analyze_dump on a cluster


def write_dump(root: Path, rng) -> Path:
    """A geonorm dump without a model: an fp32 LayerNorm site and a bf16 RMSNorm site, segments of
    uneven sizes (the hook calls), a checkpoint every two batches (several shards per site)."""
    d = 64
    g1, b1, g2 = rng.uniform(0.5, 1.5, d), rng.normal(0, 0.1, d), rng.uniform(0.5, 1.5, d)
    sites = [{"meta": {"name": "h.0.ln_1", "layer": 0, "role": "LN1", "kind": "layernorm", "d": d, "eps": 1e-5},
              "gain": g1, "bias": b1},
             {"meta": {"name": "h.0.ln_2", "layer": 0, "role": "LN2", "kind": "rmsnorm", "d": d, "eps": 1e-6},
              "gain": g2, "bias": None}]
    w = DumpWriter(root, sites, config={"test": 1}, report_meta={"model_name": "synthetic"})
    tokens = 0
    for batch, n in enumerate([37, 50, 13, 64, 41, 29, 70]):
        x = hidden_states(rng, n, d, np.float32)
        w.add("h.0.ln_1", x, post_of(x, g1.astype(np.float32), b1.astype(np.float32), 1e-5))
        x2 = hidden_states(rng, n, d, BF16)
        w.add("h.0.ln_2", x2, gn.rms_norm(x2.astype(np.float32), g2.astype(np.float32), 1e-6).astype(BF16))
        tokens += n
        if batch % 2:
            w.checkpoint(batch + 1, tokens, None)
    return w.finish(7, tokens, None).parent


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory):
    return write_dump(tmp_path_factory.mktemp("dump") / "d", np.random.default_rng(5))


def test_a_dump_on_cluster_is_analyze_dump(dump_dir, cluster, client):
    ref = analyze_dump(dump_dir)
    before = sent(client)
    # the CLI's path: an address (a Client is opened and closed around the run)
    same(analyze_dump(dump_dir, scheduler=cluster.scheduler_address), ref)
    moved = sent(client) - before
    # several tasks per site, shards grouped and folded in chains of two: the same bits
    sites = open_activations(dump_dir)
    assert sum(len(s.hidden) for s in sites) == 8
    same(gd.analyze_sites(sites, scheduler=client, task_bytes=40_000, split_every=2), ref)
    # what travelled: summaries, not rows
    data = sum(h.nbytes + p.nbytes for s in sites for h, p in zip(s.hidden, s.post))
    assert moved < data / 4, (moved, data)
    rot = ref.sites["h.0.ln_2"].rotation.moments
    assert (rot.count, rot.nan_count) == (297, 7) and ref.meta["model_name"] == "synthetic"  # 7 zero rows


def test_unhashed_dumps_and_local_schedulers(dump_dir):
    ref = analyze_dump(dump_dir, verify="size", num_threads=2)  # segments, no digest
    for sched in ("synchronous", "threads"):
        same(analyze_dump(dump_dir, verify="size", scheduler=sched), ref)
    sites = open_activations(dump_dir, verify="size")
    for task_bytes, split_every in ((1, 1), (10_000, 3), (1 << 30, 16)):
        same(gd.analyze_sites(sites, scheduler="synchronous", task_bytes=task_bytes, split_every=split_every), ref)


def test_a_corrupt_shard_fails_the_cluster_run(dump_dir, tmp_path, client):
    root = tmp_path / "d"
    shutil.copytree(dump_dir, root)
    shard = sorted(root.rglob("shard-*.safetensors"))[2]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(DumpError, match="sha256") as info:
        analyze_dump(root, scheduler=client)
    assert info.value.path == str(shard)


def test_foreign_arrays_on_cluster(tmp_path, client):
    rng = np.random.default_rng(6)
    d = 40
    (tmp_path / "pairs").mkdir()
    (tmp_path / "single").mkdir()
    for i, n in enumerate([130, 0, 75, 210]):
        x = hidden_states(rng, max(n, 3), d, np.float32)[:n]
        np.savez(tmp_path / "pairs" / f"part{i}.npz", hidden=x, post=post_of(x, None, None, 1e-5))
        np.save(tmp_path / "single" / f"part{i}.npy", x)
    np.savez_compressed(tmp_path / "z.npz", hidden=hidden_states(rng, 300, d, np.float32))
    for path in (tmp_path / "pairs", tmp_path / "single", tmp_path / "z.npz"):
        ref = analyze_dump(path, block_rows=50)
        same(analyze_dump(path, block_rows=50, scheduler=client), ref)
        same(gd.analyze_sites(open_activations(path), scheduler=client, block_rows=50, task_bytes=20_000), ref)
    # a site's shards as dask arrays: the same blocks, the same bits
    site = open_activations(tmp_path / "pairs")[0]
    got = gd.analyze_array(gd.shards_to_array(site.hidden, 50), gd.shards_to_array(site.post, 50), meta=site.meta,
                           eps=site.eps, scheduler=client)
    same(got, analyze_dump(tmp_path / "pairs", block_rows=50).sites[site.name])
    hidden_only = open_activations(tmp_path / "single")[0]
    assert tuple(analyze_dump(tmp_path / "single").sites[hidden_only.name].quantities) == HIDDEN_QUANTITIES


# ------------------------------------------------------------------ against the one-shot numbers


def test_analyze_array_matches_one_sitestats(client):
    rng = np.random.default_rng(3)
    d = 72
    x = hidden_states(rng, 3 * 700, d, np.float32).reshape(3, 700, d)
    gain, bias = rng.uniform(0.5, 2.0, d), rng.normal(0, 0.3, d)
    y = post_of(x, gain, bias, 1e-5)
    # chunks along both leading axes and along d: the last axis is rechunked, the leading ones are blocks
    got = gd.analyze_array(da.from_array(x, chunks=(2, 150, 40)), da.from_array(y, chunks=(3, 100, 72)),
                           meta={"name": "s"}, gain=gain, bias=bias, split_every=5, scheduler=client)
    one = SiteStats({"name": "s"})
    one.update(**token_values(x, y, gain=gain, bias=bias))
    assert got.tokens == one.tokens == 2100 and list(got.quantities) == list(QUANTITY_NAMES)
    for name, q in one.quantities.items():
        g = got[name]
        assert (g.count, g.moments.nan_count, g.min, g.max) == (q.count, q.moments.nan_count, q.min, q.max)
        assert g.mean == pytest.approx(q.mean, rel=1e-12) and g.std == pytest.approx(q.std, rel=1e-12)
        assert g.histogram.to_dict() == q.histogram.to_dict()


# ------------------------------------------------------------------ the mechanism, the wire, the errors


def test_record_and_replay_is_the_update_loop():
    """The summaries of units, replayed in order, are bitwise the SiteStats.update loop over the units."""
    rng = np.random.default_rng(7)
    units = []
    for n in (1, 40, 0, 333, 7, 1000):
        v = {q: rng.standard_normal(n) * 10 ** rng.uniform(-3, 8) + 10 ** rng.uniform(0, 9) for q in QUANTITY_NAMES}
        if n > 5:
            v["angle_hidden"][3] = np.nan
            v["norm_post"][:2] = [np.inf, -1.0]
        units.append(v)
    ref = SiteStats(None, bins=45)
    for v in units:
        ref.update(**v)
    for cut in ([6], [2, 4], [1, 1, 1, 1, 1, 1]):
        acc, i = SiteStats(None, bins=45), 0
        for n in cut:
            gd._replay(acc, gd._summarize(units[i:i + n], QUANTITY_NAMES, 45), QUANTITY_NAMES)
            i += n
        same(acc, ref)


def test_what_travels_is_a_few_kb():
    rng = np.random.default_rng(4)
    x = hidden_states(rng, 4096, 256, np.float32)
    summary = gd._pack(gd._summarize([token_values(x, post_of(x, None, None, 1e-5))], QUANTITY_NAMES, 180))
    assert len(summary) < 8_000  # one block's summary (measured: about 4 KB)
    job = gd._Job(names=QUANTITY_NAMES, bins=180)
    assert len(gd._fold_task(job, None, [summary] * 3)) < 8_000  # a fold's state


def test_errors(dump_dir):
    x = da.zeros((10, 8), chunks=5)
    with pytest.raises(ValueError, match="scheduler"):
        gd.analyze_array(x, scheduler="bogus")
    with pytest.raises(TypeError, match="scheduler"):
        gd.analyze_array(x, scheduler=3.5)
    with pytest.raises(ValueError, match="split_every"):
        gd.analyze_array(x, split_every=0)
    with pytest.raises(ValueError, match="post"):
        gd.analyze_array(x, da.zeros((10, 9), chunks=5), scheduler="synchronous")
    with pytest.raises(ValueError, match="shape"):
        gd.analyze_array(da.zeros(8, chunks=4))
    sites = open_activations(dump_dir)
    with pytest.raises(ValueError, match="task_bytes"):
        gd.analyze_sites(sites, task_bytes=0)
    with pytest.raises(ValueError, match="block_rows"):
        gd.analyze_sites(sites, block_rows=0)
    assert pickle.loads(pickle.dumps(DumpError("/p", "bad"))).problem == "bad"
