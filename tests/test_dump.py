"""Dumps and the dump reader: round trip against the live analysis, resume, disk space, bad input,
and every array format the reader takes.

The round trip is exact: the dump stores the hooks' rows in their own dtype and the row counts
of each hook call, and analyze_dump replays them, so its report equals analyze's bit for bit
(``to_dict()`` compared with ==).  Foreign arrays carry no such record: they are fed in
``block_rows`` blocks, so their per-token values and histograms are compared exactly and the
moments (mean, M2 merged by Chan's formula across blocks) to 1e-12 relative.
"""
import errno
import json
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import tiny  # noqa: E402

from geonorm_core import cli  # noqa: E402
from geonorm_core.analysis.accumulate import SiteStats  # noqa: E402
from geonorm_core.analysis.measure import token_values  # noqa: E402
from geonorm_core.dumps.formats import read_safetensors_header, write_safetensors  # noqa: E402
from geonorm_core.dumps.reading import analyze_dump, analyze_shard, open_activations  # noqa: E402
from geonorm_core.dumps.schema import manifest_digest  # noqa: E402
from geonorm_core.dumps.shards import HIDDEN_QUANTITIES, DumpError  # noqa: E402
from geonorm_core.dumps.writing import dump  # noqa: E402
from geonorm_core.sources.adapter import analyze  # noqa: E402


def batches(n=5, b=4, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, 97, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        if i == 1:  # padding inside the run, not only at its end
            mask[0, 7:] = 0
            mask[2, 10:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


def shard_files(root):
    return sorted(p for p in root.rglob("*.safetensors") if p.parent != root)


def first_shard(root):
    return shard_files(root)[0]


def assert_same_report(live, dumped):
    assert set(live.sites) == set(dumped.sites)
    for name, site in live.sites.items():
        assert dumped.sites[name].to_dict() == site.to_dict(), name
    assert live.meta.items() <= dumped.meta.items()


# ------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("kind, exclude_first", [("llama", False), ("gpt2", True)])
def test_dump_then_analyze_dump_is_analyze_bitwise(tmp_path, kind, exclude_first):
    model = tiny(kind)
    bs = batches()
    live = analyze(model, bs, exclude_first_token=exclude_first)
    path = dump(model, bs, tmp_path / "d", shard_rows=70, exclude_first_token=exclude_first)
    man = json.loads(path.read_text())
    assert man["complete"] and man["batches_done"] == len(bs)
    assert all(len(s["shards"]) >= 2 for s in man["sites"])  # several checkpoints
    for s in man["sites"]:  # shards hold whole batches: at least shard_rows rows but the last
        assert all(sh["rows"] >= 70 for sh in s["shards"][:-1])
    assert_same_report(live, analyze_dump(tmp_path / "d", block_rows=17))
    assert_same_report(live, analyze_dump(path, verify="size", num_threads=1))  # the manifest works too
    if kind == "gpt2":  # LayerNorm: the bias made the round trip (the gap uses it)
        site = open_activations(tmp_path / "d")[0]
        assert np.array_equal(site.bias, model.transformer.h[0].ln_1.bias.detach().numpy())


def test_a_bf16_model_stays_bf16_on_disk(tmp_path):
    model = tiny("llama", torch.bfloat16)
    bs = batches(n=3)
    dump(model, bs, tmp_path / "d")
    load_file = pytest.importorskip("safetensors.torch").load_file  # any safetensors reader opens a shard

    shard = load_file(first_shard(tmp_path / "d"))
    assert shard["hidden"].dtype == shard["post"].dtype == torch.bfloat16
    tokens = sum(int(b["attention_mask"].sum()) for b in bs)
    assert shard["hidden"].shape == shard["post"].shape == (tokens, 64)
    sites = open_activations(tmp_path / "d")
    assert all(s.hidden[0].dtype == np.dtype(ml_dtypes.bfloat16) for s in sites)
    assert_same_report(analyze(model, bs), analyze_dump(tmp_path / "d"))


def test_dtype_converts_what_is_stored(tmp_path, llama):
    dump(llama, batches(n=2), tmp_path / "d", dtype="float16")
    header, _ = read_safetensors_header(first_shard(tmp_path / "d"))
    assert header["hidden"]["code"] == header["post"]["code"] == "F16"


# ------------------------------------------------------------------------------------ resume


class Interrupted(Exception):
    pass


def interrupted(bs, after):
    for i, b in enumerate(bs):
        if i == after:
            raise Interrupted
        yield b


def test_resume_gives_the_uninterrupted_dump(tmp_path, llama):
    bs = batches(n=6)
    whole = dump(llama, bs, tmp_path / "whole", shard_rows=60)
    with pytest.raises(Interrupted):
        dump(llama, interrupted(bs, 5), tmp_path / "cut", shard_rows=60)
    cut = tmp_path / "cut"
    man = json.loads((cut / "manifest.json").read_text())
    assert not man["complete"] and 0 < man["batches_done"] < 5
    assert not [p for p in cut.rglob("*.tmp")]
    with pytest.raises(DumpError, match="incomplete"):
        open_activations(cut)
    rows = sum(s.rows for s in open_activations(cut, partial=True))
    assert rows == sum(s["rows"] for s in man["sites"]) > 0
    # what a crash inside a checkpoint leaves: a temporary file and a renamed shard not yet listed
    site_dir = first_shard(cut).parent
    (site_dir / ".shard-000009.safetensors.99.tmp").write_bytes(b"half")
    (site_dir / "shard-000009.safetensors").write_bytes(b"complete-looking but unlisted")
    with pytest.raises(FileExistsError, match="resume"):
        dump(llama, bs, cut, shard_rows=60)
    with pytest.raises(ValueError, match="same batches"):
        dump(llama, batches(n=6, seed=1), cut, shard_rows=60, resume=True)
    with pytest.raises(ValueError, match="shard_rows"):
        dump(llama, bs, cut, shard_rows=61, resume=True)
    dump(llama, bs, cut, resume=True)  # no shard_rows: the dump's own, whatever the default
    assert json.loads((cut / "manifest.json").read_text()) == json.loads(whole.read_text())
    got = {p.relative_to(cut): p.read_bytes() for p in cut.rglob("*") if p.is_file()}
    want = {p.relative_to(whole.parent): p.read_bytes() for p in whole.parent.rglob("*") if p.is_file()}
    assert got == want
    dump(llama, bs, cut, shard_rows=60, resume=True)  # complete: nothing to do, nothing changes
    assert json.loads((cut / "manifest.json").read_text()) == json.loads(whole.read_text())


def test_default_shards_are_large_files_within_the_buffer_budget():
    """Shard files of ~32 MiB (reading costs ~0.3 ms per file beyond its bytes), buffers <= 2 GiB."""
    from geonorm_core.dumps.writing import DEFAULT_BUFFER_BYTES, DEFAULT_SHARD_BYTES, default_shard_rows

    smollm2_fp32 = 61 * 2 * 576 * 4  # bytes a token: 61 sites, hidden + post
    rows = default_shard_rows(61, smollm2_fp32)
    assert rows == DEFAULT_SHARD_BYTES // (2 * 576 * 4) == 7281
    assert default_shard_rows(61, 61 * 2 * 576 * 2) == DEFAULT_SHARD_BYTES // (2 * 576 * 2) == 14563
    many = 400 * 2 * 4096 * 4  # 400 wide sites: the buffer budget decides
    assert default_shard_rows(400, many) == max(64, DEFAULT_BUFFER_BYTES // many)
    assert default_shard_rows(1, 10**9) == 64


def test_a_failed_shard_write_leaves_no_temporary_file_and_the_last_checkpoint(tmp_path, llama, monkeypatch):
    import geonorm_core.dumps.writing as dm

    real, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 11:  # params, manifest, 5 shards + manifest, then the 3rd shard of checkpoint 2
            raise OSError(errno.EIO, "simulated I/O error")
        return real(src, dst)

    monkeypatch.setattr(dm.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        dump(llama, batches(n=6), tmp_path / "d", shard_rows=60)
    monkeypatch.undo()
    root = tmp_path / "d"
    assert not [p for p in root.rglob("*.tmp")]
    man = json.loads((root / "manifest.json").read_text())
    listed = {s["file"] for e in man["sites"] for s in e["shards"]}
    assert len(listed) == 5  # the first checkpoint, one shard per site
    assert len(shard_files(root)) > len(listed)  # shards renamed before the failure, not listed
    assert sum(s.rows for s in open_activations(root, partial=True)) == sum(e["rows"] for e in man["sites"])
    dump(llama, batches(n=6), root, shard_rows=60, resume=True)
    assert_same_report(analyze(llama, batches(n=6)), analyze_dump(root))


# ------------------------------------------------------------------------------------ disk space


def test_disk_space_is_printed_and_a_full_disk_refused(tmp_path, llama, monkeypatch, capsys):
    import geonorm_core.dumps.writing as dm

    bs = batches(n=2)
    need = sum(int(b["attention_mask"].sum()) for b in bs) * 5 * 2 * 64 * 4
    monkeypatch.setattr(dm.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=need // 2, total=need,
                                                                                 used=need))
    with pytest.raises(OSError, match="not enough disk space") as err:
        dump(llama, bs, tmp_path / "d")
    assert err.value.errno == errno.ENOSPC
    assert not (tmp_path / "d").exists()  # refused before writing anything
    assert "needed" in capsys.readouterr().err
    # an iterator without max_tokens: said so; then each checkpoint checks its own bytes
    with pytest.raises(OSError, match="out of disk space"):
        dump(llama, iter(bs), tmp_path / "e")
    assert "cannot be estimated" in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["batches_done"] == 0


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def good_dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("good") / "d"
    dump(tiny("llama"), batches(n=3), root, shard_rows=40)
    return root


@pytest.fixture
def bad_dump(good_dump, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(good_dump, root)
    return root


def test_a_truncated_shard_is_named(bad_dump):
    victim = shard_files(bad_dump)[3]
    os.truncate(victim, victim.stat().st_size - 100)
    for verify in ("sha256", "size"):
        with pytest.raises(DumpError, match="truncated") as err:
            analyze_dump(bad_dump, verify=verify)
        assert err.value.path == str(victim)


def test_a_sha256_mismatch_is_named_and_nothing_of_it_is_counted(bad_dump):
    victim = shard_files(bad_dump)[-1]
    flip_a_byte(victim)
    with pytest.raises(DumpError, match="sha256") as err:
        analyze_dump(bad_dump)
    assert err.value.path == str(victim) and "none of its rows were counted" in str(err.value)
    analyze_dump(bad_dump, verify="size")  # the documented fast path does not hash


def flip_a_byte(path):
    with open(path, "r+b") as f:  # size unchanged
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x40]))


def count_hashes(monkeypatch):
    """The files analyze_dump hashes, as a list that fills up."""
    from geonorm_core.dumps import manifest, reading, verify

    hashed = []
    real = verify.hash_file

    def spy(path, buffer=None):
        hashed.append(Path(path).name)
        return real(path, buffer)

    for module in (manifest, reading):  # the params file is hashed on opening, the shards while reading
        monkeypatch.setattr(module, "hash_file", spy)
    return hashed


def test_a_shard_hashed_once_is_trusted_until_it_changes(bad_dump, monkeypatch):
    from geonorm_core.dumps import verify as digests

    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)  # the files were written just now
    hashed = count_hashes(monkeypatch)
    first = analyze_dump(bad_dump)
    n_files = len(shard_files(bad_dump)) + 1  # the shards and the params file
    assert len(hashed) == n_files
    hashed.clear()
    again = analyze_dump(bad_dump)
    assert hashed == [] and again.to_dict() == first.to_dict()  # trusted, and the same report
    analyze_dump(bad_dump, verify="rehash")
    assert len(hashed) == n_files
    hashed.clear()
    victim = shard_files(bad_dump)[1]
    flip_a_byte(victim)  # a write: its ctime moves, so the record no longer vouches for it
    with pytest.raises(DumpError, match="sha256") as err:
        analyze_dump(bad_dump)
    assert hashed == [victim.name] and err.value.path == str(victim)


def test_a_shard_changed_just_before_it_was_hashed_is_not_recorded(bad_dump, monkeypatch):
    """git's racily-clean rule: a write in the same timestamp tick as the hash could go unseen."""
    hashed = count_hashes(monkeypatch)
    analyze_dump(bad_dump)  # written < RACY_SECONDS ago: hashed, not recorded
    hashed.clear()
    analyze_dump(bad_dump)
    assert len(hashed) == len(shard_files(bad_dump)) + 1


def test_the_record_is_per_file_identity(tmp_path, monkeypatch):
    from geonorm_core.dumps import verify as digests

    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    digest, identity = digests.hash_file(f)
    rec = digests.VerifiedFiles(tmp_path)
    rec.add(f, identity, digest)
    rec.save()
    rec = digests.VerifiedFiles(tmp_path)  # read back from the cache folder
    assert rec.known(f, digest) and not rec.known(f, "0" * 64)
    g = tmp_path / "b.bin"
    g.write_bytes(b"x" * 100)
    os.replace(g, f)  # same bytes, another inode: hashed again
    assert not rec.known(f, digest)
    assert digests.hash_file(f)[0] == digest


@pytest.mark.parametrize("field, value, message", [
    ("rows", 3, "shape"),
    ("dtype", {"hidden": "F16", "post": "F32"}, "F16"),
    ("bytes", 10, "manifest says 10"),
])
def test_a_manifest_that_disagrees_with_a_shard_is_named(bad_dump, field, value, message):
    man = json.loads((bad_dump / "manifest.json").read_text())
    entry = man["sites"][1]["shards"][0]
    if field == "rows":  # the manifest stays consistent with itself, only the shard disagrees
        man["sites"][1]["rows"] += value - entry["rows"]
        entry["segments"] = None
    entry[field] = value
    man["manifest_sha256"] = manifest_digest(man)  # as if geonorm had written it so
    (bad_dump / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DumpError, match=message) as err:
        open_activations(bad_dump)
    assert entry["file"] in err.value.path


def test_a_missing_shard_and_a_bad_manifest_are_named(bad_dump):
    victim = shard_files(bad_dump)[0]
    victim.unlink()
    with pytest.raises(DumpError, match="missing") as err:
        open_activations(bad_dump)
    assert err.value.path == str(victim)
    (bad_dump / "manifest.json").write_text("{not json")
    with pytest.raises(DumpError, match="manifest"):
        open_activations(bad_dump)


def write_raw_safetensors(path, entries, data):
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_an_unknown_dtype_is_named(tmp_path):
    f = tmp_path / "ints.safetensors"
    write_raw_safetensors(f, {"x": {"dtype": "I32", "shape": [2, 4], "data_offsets": [0, 32]}}, bytes(32))
    with pytest.raises(DumpError, match="I32") as err:
        open_activations(f)
    assert err.value.path == str(f)
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int32))
    with pytest.raises(DumpError, match="int32"):
        open_activations(tmp_path / "ints.npy")


def test_shapes_that_do_not_fit_are_named(tmp_path):
    np.save(tmp_path / "vector.npy", np.ones(8, np.float32))
    with pytest.raises(DumpError, match=r"\(\.\.\., d\)") as err:
        open_activations(tmp_path / "vector.npy")
    assert err.value.path.endswith("vector.npy")
    folder = tmp_path / "shards"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((4, 8), np.float32))
    np.save(folder / "b.npy", np.ones((2, 3, 9), np.float32))
    with pytest.raises(DumpError, match="d=9") as err:
        open_activations(folder)
    assert err.value.path.endswith("b.npy")
    np.savez(tmp_path / "pair.npz", hidden=np.ones((4, 8), np.float32), post=np.ones((5, 8), np.float32))
    with pytest.raises(DumpError, match="pair up"):
        open_activations(tmp_path / "pair.npz")


def test_truncated_foreign_files_are_named(tmp_path):
    x = np.ones((50, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    os.truncate(tmp_path / "x.npy", (tmp_path / "x.npy").stat().st_size - 4)
    with pytest.raises(DumpError, match="truncated") as err:
        open_activations(tmp_path / "x.npy")
    assert err.value.path.endswith("x.npy")
    write_safetensors(tmp_path / "x.safetensors", {"x": [x]})
    os.truncate(tmp_path / "x.safetensors", 200)
    with pytest.raises(DumpError, match="truncated"):
        open_activations(tmp_path / "x.safetensors")
    torch.save(torch.ones(50, 8), tmp_path / "x.pt")
    os.truncate(tmp_path / "x.pt", 300)
    with pytest.raises(DumpError, match="x.pt"):
        open_activations(tmp_path / "x.pt")


# ------------------------------------------------------------------------------------ formats


def expected(hidden, post=None):
    """What the site's statistics must be: the quantities of the whole array, fed once."""
    names = HIDDEN_QUANTITIES if post is None else None
    values = token_values(hidden, post)
    stats = SiteStats({}, names=names) if names else SiteStats({})
    return stats.update(**{k: v for k, v in values.items() if k in stats.quantities})


def assert_stats_match(got, want):
    assert set(got.quantities) == set(want.quantities)
    assert got.tokens == want.tokens
    for name, q in want.quantities.items():
        g = got[name]
        assert g.histogram.to_dict() == q.histogram.to_dict(), name
        assert (g.count, g.min, g.max) == (q.count, q.min, q.max), name
        assert g.mean == pytest.approx(q.mean, rel=1e-12, abs=1e-300), name
        assert g.std == pytest.approx(q.std, rel=1e-12, abs=1e-300), name


def data(rng, shape, dtype=np.float32):
    return (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)


def write_st(path, arrays):
    """Written by the safetensors library itself: the reader must take its files, not only ours."""
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


@pytest.mark.parametrize("fmt", ["npy", "npy-fortran", "npy-bigendian", "npz", "npz-compressed",
                                 "safetensors-F32", "safetensors-F16", "safetensors-F64", "safetensors-BF16",
                                 "pt", "pt-bf16"])
def test_every_format_reads_as_token_values(tmp_path, rng, fmt):
    suffix = fmt.rsplit("-", 1)[-1]
    bf16 = ml_dtypes.bfloat16
    dtype = {"F16": np.float16, "F64": np.float64, "BF16": bf16, "bf16": bf16}.get(suffix, np.float32)
    x = data(rng, (3, 41, 24), dtype)  # a 3-D (batch, seq, d) array
    path = tmp_path / f"acts.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "npy-fortran":
        np.save(path, np.asfortranarray(x))
    elif fmt == "npy-bigendian":
        np.save(path, x.astype(">f4"))
    elif fmt == "npz":
        np.savez(path, x=x)
    elif fmt == "npz-compressed":
        np.savez_compressed(path, x=x)
    elif fmt == "safetensors-BF16":
        write_safetensors(path, {"x": [x.reshape(-1, 24)]})  # numpy's save_file has no bfloat16
    elif fmt.startswith("safetensors"):
        write_st(path, {"x": x})
    else:
        t = torch.from_numpy(x.astype(np.float32))
        torch.save(t.to(torch.bfloat16) if fmt == "pt-bf16" else t, path)
    (site,) = open_activations(path)
    assert (site.rows, site.d, site.post) == (123, 24, None)
    if fmt.startswith(("pt", "safetensors", "npy")) and fmt != "npy-fortran":  # located in the file
        assert type(site.hidden[0]).__name__ == "FileShard"
    report = analyze_dump(path, block_rows=50)
    assert_stats_match(report.sites[site.name], expected(x))


def test_hidden_and_post_files_give_every_quantity(tmp_path, rng):
    h, p = data(rng, (60, 16)), data(rng, (60, 16))
    torch.save({"hidden": torch.from_numpy(h), "post": torch.from_numpy(p)}, tmp_path / "pair.pt")
    report = analyze_dump(tmp_path / "pair.pt", block_rows=7)
    assert_stats_match(report.sites["pair"], expected(h, p))


def test_a_folder_of_shards_is_one_site_in_name_order(tmp_path, rng):
    parts = [data(rng, (n, 12), ml_dtypes.bfloat16) for n in (5, 30, 17)]
    for i, part in zip((2, 10, 1), parts):  # 1 < 2 < 10 as numbers, not as strings
        write_safetensors(tmp_path / f"shard_{i}.safetensors", {"hidden": [part]})
    order = [parts[2], parts[0], parts[1]]
    (site,) = open_activations(tmp_path)
    assert [s.rows for s in site.hidden] == [17, 5, 30]
    np.testing.assert_array_equal(np.concatenate([s.read(0, s.rows) for s in site.hidden]),
                                  np.concatenate(order))
    report = analyze_dump(tmp_path, block_rows=8)
    assert_stats_match(report.sites[tmp_path.name], expected(np.concatenate(order)))
    clone = pickle.loads(pickle.dumps(site))  # shards travel to Dask workers
    np.testing.assert_array_equal(clone.hidden[1].read(0, 5), parts[0])


def test_several_arrays_are_several_sites(tmp_path, rng):
    a, b = data(rng, (10, 8)), data(rng, (10, 8))
    write_st(tmp_path / "layers.safetensors", {"layer0": a, "layer1": b})
    sites = open_activations(tmp_path / "layers.safetensors")
    assert [s.name for s in sites] == ["layer0", "layer1"]
    np.testing.assert_array_equal(sites[1].hidden[0].read(2, 5), b[2:5])


# ------------------------------------------------------------------------------------ routing and CLI


def test_a_scheduler_routes_to_the_dask_path(good_dump, monkeypatch):
    seen = {}

    def analyze_sites(sites, *, scheduler, block_rows, bins):
        seen.update(sites=sites, scheduler=scheduler, block_rows=block_rows, bins=bins)
        return {s.name: s.new_stats(bins) for s in sites}

    monkeypatch.setitem(sys.modules, "geonorm_core.dumps.dask", types.SimpleNamespace(analyze_sites=analyze_sites))
    report = analyze_dump(good_dump, scheduler="tcp://example:8786", block_rows=64, bins=90)
    assert seen["scheduler"] == "tcp://example:8786" and (seen["block_rows"], seen["bins"]) == (64, 90)
    assert set(report.sites) == {s.name for s in seen["sites"]}


def test_the_commands_dump_and_analyze(tmp_path, llama, monkeypatch, capsys):
    bs = batches(n=2)
    monkeypatch.setattr(cli.dump, "load_workload", lambda args: (llama, None, iter(bs), {"model_name": "tiny-llama"}))
    monkeypatch.setattr(cli.dump, "check_model_options", lambda args: "a tiny llama")
    assert cli.main(["dump", "--out", str(tmp_path / "d"), "--max-tokens", "96", "--shard-rows", "50"]) == 0
    assert "needed" in capsys.readouterr().err
    assert cli.main(["analyze-dump", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--block-rows", "32",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "geonorm report: tiny-llama" in out and "wrote" in out
    assert (tmp_path / "r" / "report.json").is_file()
    np.save(tmp_path / "x.npy", data(np.random.default_rng(0), (20, 8)))
    assert cli.main(["analyze-dump", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r2")]) == 0
    assert "angle_hidden" in capsys.readouterr().out


def test_shards_as_tasks_merge_to_the_whole(bad_dump):
    """analyze_shard, the unit a scheduler runs: verified per shard; merged, it is analyze_dump's report."""
    whole = analyze_dump(bad_dump)
    for site in open_activations(bad_dump):
        parts = [analyze_shard(site, k, block_rows=9) for k in range(len(site.hidden))]
        total = parts[0]
        for part in parts[1:]:
            total.merge(part)
        assert_stats_match(total, whole.sites[site.name])
    victim = shard_files(bad_dump)[1]
    data_ = bytearray(victim.read_bytes())
    data_[-1] ^= 1
    victim.write_bytes(bytes(data_))
    site = open_activations(bad_dump)[0]
    with pytest.raises(DumpError, match="sha256"):
        analyze_shard(site, 1)
