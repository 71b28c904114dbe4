"""Issue 22's ten reproducers, as a hostile user would run them: every one ends in a one-line
DumpError (or CLI error) naming the file, or in a correct result, with nothing outside the
folders it was given touched."""
import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from deadline import deadline

torch = pytest.importorskip("torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import tiny

from geonorm_core import cli, durable, runtime
from geonorm_core.analysis.report import Report
from geonorm_core.dumps import reading
from geonorm_core.dumps.formats import write_safetensors
from geonorm_core.dumps.reading import analyze_dump, open_activations
from geonorm_core.dumps.schema import ROLES, manifest_digest
from geonorm_core.dumps.shards import DumpError
from geonorm_core.dumps.writing import dump
from geonorm_core.models.corpus import read_text, text_blocks, token_batches


def batches(n=4, b=2, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (b, t), generator=g),
             "attention_mask": torch.ones(b, t, dtype=torch.long)} for _ in range(n)]


class Interrupted(Exception):
    pass


def interrupted(bs, after):
    for i, b in enumerate(bs):
        if i == after:
            raise Interrupted
        yield b


@pytest.fixture(scope="module")
def llama():
    return tiny("llama")


@pytest.fixture(scope="module")
def clean_dump(tmp_path_factory, llama):
    root = tmp_path_factory.mktemp("clean") / "d"
    dump(llama, batches(), root, shard_rows=20)
    return root


@pytest.fixture
def dumped(clean_dump, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(clean_dump, root)
    return root


def snapshot(folder):
    """Every file under ``folder`` with its sha256 (to prove nothing there changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def edit_manifest(root, change, reseal=True):
    man = json.loads((root / "manifest.json").read_text())
    change(man)
    if reseal:  # as if geonorm had written it: what the schema alone must catch
        man["manifest_sha256"] = manifest_digest(man)
    (root / "manifest.json").write_text(json.dumps(man))


def run_cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


# ---- 1. a manifest's paths never escape the dump ---------------------------------------------


def test_1_a_resume_never_touches_another_dump(tmp_path, llama, clean_dump):
    victim = tmp_path / "victim" / "otherdump"
    shutil.copytree(clean_dump, victim)
    before = snapshot(tmp_path / "victim")
    evil = tmp_path / "evil"
    bs = batches()
    with pytest.raises(Interrupted):
        dump(llama, interrupted(bs, 3), evil, shard_rows=5)
    first = json.loads((evil / "manifest.json").read_text())["sites"][0]["dir"]
    for reseal in (True, False):
        edit_manifest(evil, lambda m: m["sites"][0].update(dir=f"../victim/otherdump/{first}"), reseal)
        with deadline(), pytest.raises(DumpError, match=r"sites\[0\]\.dir|manifest_sha256") as err:
            dump(llama, bs, evil, resume=True)
        assert err.value.path == str(evil / "manifest.json")
        assert snapshot(tmp_path / "victim") == before


def test_1_a_symlinked_site_folder_is_refused_before_anything_is_deleted(tmp_path, llama, clean_dump):
    victim = tmp_path / "victim"
    shutil.copytree(clean_dump, victim)
    before = snapshot(victim)
    evil = tmp_path / "evil"
    bs = batches()
    with pytest.raises(Interrupted):
        dump(llama, interrupted(bs, 3), evil, shard_rows=5)
    site = json.loads((evil / "manifest.json").read_text())["sites"][0]["dir"]
    shutil.rmtree(evil / site)
    (evil / site).symlink_to(victim / site, target_is_directory=True)
    with pytest.raises(DumpError, match="outside the dump"):
        dump(llama, bs, evil, resume=True)
    with pytest.raises(DumpError, match="outside the dump"):
        open_activations(evil, partial=True)
    assert snapshot(victim) == before


@pytest.mark.parametrize("name", ["/tmp/x/secret.safetensors", "../../../../etc/shadow",
                                  "000.model.embed/../../secret.safetensors", "./a/shard-000000.safetensors"])
def test_1_a_shard_path_outside_the_dump_is_refused_by_name(dumped, name):
    edit_manifest(dumped, lambda m: m["sites"][0]["shards"][0].update(file=name))
    with pytest.raises(DumpError, match=r"sites\[0\]\.shards\[0\]\.file") as err:
        open_activations(dumped)
    assert err.value.path == str(dumped / "manifest.json")
    assert "\n" not in str(err.value)


def test_1_a_shard_symlinked_outside_the_dump_is_refused(dumped, tmp_path):
    shard = dumped / json.loads((dumped / "manifest.json").read_text())["sites"][0]["shards"][0]["file"]
    outside = tmp_path / "outside.safetensors"
    shutil.copy(shard, outside)
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(DumpError, match="outside the dump"):
        open_activations(dumped)


# ---- 2. geonorm's own manifests and shard headers: DumpErrors naming file and field ------------


@pytest.mark.parametrize("change, field", [
    (lambda m: m["sites"][0].update(meta={k: v for k, v in m["sites"][0]["meta"].items() if k != "d"}),
     r"sites\[0\]\.meta\.d: missing"),
    (lambda m: m.update(report_meta="x"), "report_meta"),
    (lambda m: m["sites"][0]["shards"][0].update(bytes=float("inf")), r"shards\[0\]\.bytes"),
    (lambda m: m["sites"][0]["meta"].update(eps=float("-inf")), r"meta\.eps"),
    (lambda m: m["sites"][0].update(gain=["x"]), r"sites\[0\]\.gain"),
    (lambda m: m["sites"][0].update(rows="abc"), r"sites\[0\]\.rows"),
    (lambda m: m["sites"][0]["shards"][0].update(rows=-1), r"shards\[0\]\.rows"),
    (lambda m: m.update(sites={"a": 1}), "sites"),
])
def test_2_malformed_manifest_fields_are_named(dumped, change, field):
    man = json.loads((dumped / "manifest.json").read_text())
    change(man)
    raw = json.dumps(man)  # inf/-inf become Infinity/-Infinity: JSON geonorm refuses as well
    (dumped / "manifest.json").write_text(raw)
    with pytest.raises(DumpError) as err:
        open_activations(dumped)
    assert err.value.path == str(dumped / "manifest.json")
    if "Infinity" not in raw:
        assert __import__("re").search(field, err.value.problem), err.value.problem


def test_2_deep_nesting_and_huge_numbers_are_one_line_errors(dumped):
    text = (dumped / "manifest.json").read_text()
    (dumped / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(DumpError, match="nested"):
        open_activations(dumped)
    (dumped / "manifest.json").write_text('{"x": ' + "[" * 40 + "]" * 40 + ", " + text[1:])
    with pytest.raises(DumpError, match="nested"):
        open_activations(dumped)
    for number in ("1e400", "-1e400", "1" * 5000, "NaN"):
        (dumped / "manifest.json").write_text(text.replace('"tokens": ', f'"tokens": {number}, "was": ', 1))
        with pytest.raises(DumpError, match="manifest") as err:
            open_activations(dumped)
        assert err.value.path == str(dumped / "manifest.json")


def test_2_a_shard_header_with_a_string_offset_is_named(dumped):
    man = json.loads((dumped / "manifest.json").read_text())
    shard = dumped / man["sites"][1]["shards"][0]["file"]
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].decode()
    bad = header.replace('"data_offsets":[0,', '"data_offsets":["0",', 1)
    assert bad != header
    bad = bad.removesuffix("  ")  # keep the file's size where the padding allows: the header must be refused
    shard.write_bytes(struct.pack("<Q", len(bad.encode())) + bad.encode() + raw[8 + n:])
    for verify in ("sha256", "size"):
        with pytest.raises(DumpError) as err:
            analyze_dump(dumped, verify=verify)
        assert err.value.path == str(shard)


# ---- 3. reports are written atomically; a second writer is refused ----------------------------


def test_3_a_full_disk_leaves_the_old_report_and_names_the_path(tmp_path, monkeypatch):
    report = Report(meta={"model": "x"}, sites={})
    report.to_json(tmp_path / "report.json")
    before = (tmp_path / "report.json").read_bytes()
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", full)
    with pytest.raises(OSError) as err:
        Report(meta={"model": "y" * 1000}, sites={}).to_json(tmp_path / "report.json")
    monkeypatch.setattr(durable.os, "fsync", real)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "report.json")
    assert (tmp_path / "report.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_3_report_save_writes_every_file_through_the_durable_helpers(tmp_path, clean_dump, monkeypatch):
    renamed = []
    real = os.replace

    def spy(src, dst):  # the rename every durable write ends with (temporary name -> final name)
        renamed.append((os.path.basename(src), os.path.basename(dst)))
        return real(src, dst)

    monkeypatch.setattr(durable.os, "replace", spy)
    paths = analyze_dump(clean_dump).save(tmp_path / "out")
    assert any(p.endswith(".png") for p in paths)
    assert sorted(dst for _, dst in renamed) == sorted(os.path.basename(p) for p in paths)
    assert all(src == f".{dst}.{os.getpid()}.tmp" for src, dst in renamed)


def hold_lock_in_another_process(folder):
    code = ("import sys, time; from geonorm_core.durable import folder_lock\n"
            "with folder_lock(sys.argv[1], 'geonorm analyze'):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_3_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys, clean_dump):
    out = tmp_path / "out"
    holder = hold_lock_in_another_process(out)
    try:
        for argv in (["analyze-dump", str(clean_dump), "--out", str(out)],
                     ["analyze", "--model", "nope", "--out", str(out)],
                     ["dump", "--model", "nope", "--out", str(out)],
                     ["swap-test", "--model", "nope", "--out", str(out)],
                     ["convert", "--model", "nope", "--out", str(out)]):
            code, err = run_cli(argv, capsys)
            assert code == 1 and len(err) == 1, err
            assert err[0].startswith(f"geonorm {argv[0]}: error: {out}: in use by geonorm analyze (pid "), err
        assert not (out / "report.json").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, stale
        holder.wait(timeout=30)
    assert (out / durable.LOCK_NAME).exists()
    code, err = run_cli(["analyze-dump", str(clean_dump), "--out", str(out)], capsys)
    assert code == 0 and json.loads((out / "report.json").read_text())["sites"]
    assert not (out / durable.LOCK_NAME).exists()  # released on exit


def test_3_the_lock_falls_back_to_the_pid_where_flock_is_missing(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / durable.LOCK_NAME).write_text("999999999 " + __import__("socket").gethostname() + " x\n")
    with durable.folder_lock(tmp_path, "geonorm a"):  # a dead pid: stale
        pass
    (tmp_path / durable.LOCK_NAME).write_text(f"{os.getppid()} {__import__('socket').gethostname()} x\n")
    with pytest.raises(durable.FolderLocked, match="in use by x"), durable.folder_lock(tmp_path, "geonorm b"):
        pass


# ---- 4. planning is linear in the number of shards ------------------------------------------


def test_4_read_ahead_is_linear_in_the_shards(tmp_path, monkeypatch):
    calls = []
    real = reading._ReadAhead.prefetch

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(reading._ReadAhead, "prefetch", counting)
    counts = {}
    for n in (300, 1200):
        folder = tmp_path / f"f{n}"
        folder.mkdir()
        for i in range(n):
            np.save(folder / f"{i}.npy", np.full((2, 8), i + 1.0, np.float32))
        calls.clear()
        assert analyze_dump(folder, num_threads=1).tokens == 2 * n
        counts[n] = len(calls)
    assert counts[1200] <= 2 * 1200 and counts[1200] <= 4.5 * counts[300], counts


def test_4_many_tensors_in_one_safetensors_file(tmp_path):
    n = 3000
    write_safetensors(tmp_path / "many.safetensors", {f"t{i}": [np.full((1, 4), i + 1.0, np.float32)]
                                                      for i in range(n)})
    with deadline(60):
        report = analyze_dump(tmp_path / "many.safetensors", num_threads=1)
    assert len(report.sites) == n
    h = [s.angle_hidden.histogram for s in list(report.sites.values())[:2]]
    assert h[0].edges is h[1].edges  # one edges array for all: memory per site is the counts


# ---- 5. only regular files are read ----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".npz", ".pt"])
def test_5_a_fifo_is_refused_not_waited_on(tmp_path, suffix):
    fifo = tmp_path / f"f{suffix}"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(DumpError, match="FIFO") as err:
        analyze_dump(fifo)
    assert err.value.path == str(fifo)


def test_5_a_device_behind_a_symlink_is_refused(tmp_path, capsys):
    link = tmp_path / "u.npz"
    link.symlink_to("/dev/urandom")
    with deadline(), pytest.raises(DumpError, match="character device"):
        analyze_dump(link)
    code, err = run_cli(["analyze-dump", str(link), "--out", str(tmp_path / "o")], capsys)
    want = f"geonorm analyze-dump: error: {link}: is a character device, not a regular file: geonorm reads only " \
           f"regular files"
    assert code == 1 and err == [want]


def test_5_a_shard_or_manifest_replaced_by_a_fifo_is_refused(dumped):
    shard = dumped / json.loads((dumped / "manifest.json").read_text())["sites"][0]["shards"][0]["file"]
    shard.unlink()
    os.mkfifo(shard)
    with deadline(), pytest.raises(DumpError, match="FIFO") as err:
        analyze_dump(dumped)
    assert err.value.path == str(shard)
    (dumped / "manifest.json").unlink()
    os.mkfifo(dumped / "manifest.json")
    with deadline(), pytest.raises(DumpError, match="FIFO"):
        analyze_dump(dumped / "manifest.json")


# ---- 6. .npz members are CRC-checked, memory-mapped or not -----------------------------------


def flip_in_member(path, member, at=-4):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n_name, n_extra = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + n_name + n_extra + info.compress_size + at
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_6_a_bad_crc_is_an_error(tmp_path, rng, save):
    x = rng.normal(size=(4096, 16)).astype(np.float32)  # large enough to be mapped when stored
    save(tmp_path / "a.npz", hidden=x)
    good = analyze_dump(tmp_path / "a.npz").to_dict()
    flip_in_member(tmp_path / "a.npz", "hidden.npy", at=-40 if save is np.savez else -8)
    with pytest.raises(DumpError, match="CRC|inflated") as err:
        report = analyze_dump(tmp_path / "a.npz")
        assert report.to_dict() == good  # a flip the format cannot see may only give the same report
    assert err.value.path == str(tmp_path / "a.npz")


# ---- 7. the manifest itself is protected -----------------------------------------------------


@pytest.mark.parametrize("change", [
    lambda m: m["sites"][0]["meta"].update(eps=0.5),
    lambda m: m["sites"][0].update(gain=None),
    lambda m: m["sites"][0]["meta"].update(role="LN2" if m["sites"][0]["meta"]["role"] == "LN1" else "LN1"),
    lambda m: m["sites"][0].update(name=m["sites"][0]["name"].replace("layers", "layerr")),
    lambda m: m.pop("manifest_sha256"),
])
def test_7_an_edited_manifest_is_detected(dumped, change):
    edit_manifest(dumped, change, reseal=False)
    with pytest.raises(DumpError, match="manifest") as err:
        analyze_dump(dumped)
    assert err.value.path == str(dumped / "manifest.json")


def test_7_a_shard_without_its_digest_is_an_error_even_resealed(dumped):
    edit_manifest(dumped, lambda m: m["sites"][0]["shards"][0].update(sha=m["sites"][0]["shards"][0].pop("sha256")))
    with pytest.raises(DumpError, match=r"shards\[0\]\.sha256: missing"):
        analyze_dump(dumped)


def test_7_unknown_roles_and_kinds_are_refused_and_verify_size_trusts_the_manifest(dumped, clean_dump):
    edit_manifest(dumped, lambda m: m["sites"][0]["meta"].update(role="LN5"))
    with pytest.raises(DumpError, match="LN5"):
        analyze_dump(dumped)
    edit_manifest(dumped, lambda m: m["sites"][0]["meta"].update(role="LN1", kind="weird"))
    with pytest.raises(DumpError, match="weird"):
        analyze_dump(dumped)
    edit_manifest(dumped, lambda m: m["sites"][0]["meta"].update(kind="rmsnorm", eps=0.25), reseal=False)
    assert analyze_dump(dumped, verify="size").sites  # --verify size: headers and sizes only, as documented


def test_7_the_schema_knows_the_roles_sites_gives():
    from geonorm_core.sources.sites import ROLES as SITE_ROLES

    assert ROLES == SITE_ROLES


# ---- 8. strict headers, foreign and own ------------------------------------------------------


def npy_with_header(path, header_dict_text, payload):
    header = header_dict_text.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)


@pytest.mark.parametrize("shape", ["(-2, 8)", "(-2, -3, 8)"])
def test_8_negative_npy_shapes_are_refused(tmp_path, shape):
    f = tmp_path / "neg.npy"
    npy_with_header(f, f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}", bytes(4 * 48))
    with pytest.raises(DumpError, match="non-negative") as err:
        analyze_dump(f)
    assert err.value.path == str(f)


def raw_safetensors(path, entries, nbytes):
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(nbytes))


@pytest.mark.parametrize("entries, nbytes, message", [
    ({"x": {"dtype": "F32", "shape": "18", "data_offsets": [0, 32]}}, 32, "shape"),
    ({"x": {"dtype": "F32", "shape": [10.9, 8.2], "data_offsets": [0, 320]}}, 320, "shape"),
    ({"x": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
      "y": {"dtype": "F32", "shape": [2, 4], "data_offsets": [16, 48]}}, 48, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
      "y": {"dtype": "F32", "shape": [2, 4], "data_offsets": [40, 72]}}, 72, "hole"),
    ({"x": {"dtype": "f32", "shape": [2, 4], "data_offsets": [0, 32]}}, 32, "dtype f32"),
    ({"x": {"dtype": ["F32"], "shape": [2, 4], "data_offsets": [0, 32]}}, 32, "dtype"),
    ({"x": {"dtype": "F32", "shape": [2, 4], "data_offsets": ["0", 32]}}, 32, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32], "extra": 1}}, 32, "exactly"),
    ({"x": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}, 40, "padded"),
    ({"__metadata__": {"a": 1}, "x": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}, 32,
     "__metadata__"),
])
def test_8_lax_safetensors_headers_are_refused(tmp_path, entries, nbytes, message):
    f = tmp_path / "x.safetensors"
    raw_safetensors(f, entries, nbytes)
    with pytest.raises(DumpError, match=message) as err:
        analyze_dump(f)
    assert err.value.path == str(f) and "\n" not in str(err.value)


# ---- 9. thread counts are clamped with a warning ---------------------------------------------


def test_9_huge_thread_counts_are_clamped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEONORM_NUM_THREADS", "99999999999")
    monkeypatch.setattr(runtime, "_num_threads", 0)
    with pytest.warns(RuntimeWarning, match="clamped"):
        assert runtime.get_num_threads() == runtime.max_threads()
    monkeypatch.setattr(runtime, "_num_threads", 0)
    monkeypatch.delenv("GEONORM_NUM_THREADS")
    np.save(tmp_path / "x.npy", np.ones((6, 4), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, err = run_cli(["analyze-dump", str(tmp_path / "x.npy"), "--threads", "99999999999",
                             "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    warned = [line.rsplit("\r", 1)[-1].split("]", 1)[-1] for line in err if "clamped" in line]  # past tqdm's bar
    want = (f"geonorm analyze-dump: warning: num_threads=99999999999 is more threads than this machine can use; "
            f"clamped to {runtime.max_threads()}")
    assert warned == [want]


# ---- 10. --text is streamed ------------------------------------------------------------------


def test_10_a_large_text_is_streamed(tmp_path, byte_tokenizer):
    line = "The quick brown fox jumps over the lazy dog. " * 20 + "\n"
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    with open(big, "w") as f:
        f.writelines(line for _ in range(40_000))  # 36 MB
    small.write_text(line * 3000)  # 2.7 MB: a few blocks of about 1 MB

    def peak(path):
        tracemalloc.start()
        out = list(token_batches(text_blocks(path), byte_tokenizer, seq_len=32, batch_size=2, max_tokens=100))
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p, out

    (p_big, b_big), (p_small, b_small) = peak(big), peak(small)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(b_big, b_small))
    assert p_big < 1.2 * p_small + (1 << 20) and p_big < (20 << 20), (p_big, p_small)  # not 36 MB, twice


def test_10_streamed_blocks_are_the_blocks_of_the_whole_text(tmp_path, monkeypatch):
    from geonorm_core.models import corpus

    monkeypatch.setattr(corpus, "_BLOCK_CHARS", 500)
    monkeypatch.setattr(corpus, "_READ_BYTES", 77)
    rng = np.random.default_rng(0)
    words = ["héllo", "wörld", "\n", "日本語", "a" * 40, "\n\n", "x", "🙂"]
    (tmp_path / "t.txt").write_text("\ufeff" + " ".join(words[i] for i in rng.integers(0, 8, 3000)))
    assert list(text_blocks(tmp_path / "t.txt")) == list(corpus._str_blocks(read_text(tmp_path / "t.txt")))
    (tmp_path / "bad.txt").write_bytes("é".encode() * 300 + b"\xff")
    with pytest.raises(ValueError, match="byte offset 600"):
        list(text_blocks(tmp_path / "bad.txt"))
    (tmp_path / "ws.txt").write_text(" \n\t ")
    with pytest.raises(ValueError, match="whitespace only"):
        list(text_blocks(tmp_path / "ws.txt"))


def test_7_version_1_dumps_are_still_read_and_a_resume_seals_them(dumped, llama):
    want = analyze_dump(dumped).to_dict()["sites"]

    def as_version_1(m):
        m.pop("manifest_sha256")
        m["version"] = 1

    edit_manifest(dumped, as_version_1, reseal=False)
    assert analyze_dump(dumped).to_dict()["sites"] == want
    dump(llama, batches(), dumped, resume=True)  # complete: nothing to write, nothing changes
    assert json.loads((dumped / "manifest.json").read_text())["version"] == 1
    edit_manifest(dumped, lambda m: m.update(version=3), reseal=False)
    with pytest.raises(DumpError, match="version 3"):
        analyze_dump(dumped)
