"""More than one process: torchrun (2 gloo processes on the CPU), the library inside a process
group, checkpoints killed and resumed under torchrun, and `geonorm merge`.

Every process is started with a timeout; a test that hangs fails instead."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from geonorm_core import cli
from geonorm_core.analysis.merging import (
    IncompatibleReports,
    OverlappingReports,
    batch_ranges,
    batch_set,
    merge_reports,
)
from geonorm_core.analysis.report import Report

pytestmark = pytest.mark.slow   # spawns gloo process groups and torchrun: the full tier only

HERE = Path(__file__).resolve().parent
RUN = ["--max-tokens", "3000", "--seq-len", "64", "--batch-size", "4", "--checkpoint-every", "300"]
TORCHRUN = shutil.which("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "GEONORM_DIST_TIMEOUT": "60", **extra}
    e["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), e.get("PYTHONPATH", "")])
    return e


def torchrun(*args: str, n: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    if TORCHRUN is None:
        pytest.skip("torchrun is not on PATH")
    cmd = [TORCHRUN, "--nproc-per-node", str(n), "--master-port", str(free_port()), "-m", "geonorm_core.cli",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), check=False)


def assert_same_report(a: dict, b: dict, *, bitwise: bool = False) -> None:
    """Token and histogram counts, min and max equal; means and M2 within 1e-12 relative (or bitwise)."""
    assert a["sites"].keys() == b["sites"].keys()
    for name, sa in a["sites"].items():
        sb = b["sites"][name]
        assert sa["tokens"] == sb["tokens"] > 0 and sa["meta"] == sb["meta"]
        for q, qa in sa["quantities"].items():
            qb = sb["quantities"][q]
            assert qa["histogram"] == qb["histogram"], (name, q)
            ma, mb = qa["moments"], qb["moments"]
            for k in ("count", "nan_count", "min", "max"):
                assert ma[k] == mb[k], (name, q, k)
            for k in ("mean", "m2"):
                if bitwise:
                    assert ma[k] == mb[k], (name, q, k)
                else:
                    assert abs(ma[k] - mb[k]) <= 1e-12 * abs(ma[k]), (name, q, k, ma[k], mb[k])


def read(folder) -> dict:
    return json.loads((Path(folder) / "report.json").read_text())


# -- torchrun: the command line --------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_process(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "report"
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out)]) == 0
    return read(out)


@pytest.fixture(scope="module")
def two_processes(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "report"
    done = torchrun("analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return read(out), done


def test_torchrun_analyze_writes_the_one_process_report(one_process, two_processes):
    report, done = two_processes
    assert_same_report(one_process, report)
    assert report["meta"]["processes"] == 2 and report["meta"]["batches"] == one_process["meta"]["batches"]
    assert done.stdout.count("wrote 9 files") == 1  # rank 0 alone writes and prints


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def wait_until_dead(out: Path, timeout: float = 60) -> None:
    """Wait for the killed rank that held ``out``'s lock to exit (SIGKILL is delivered, not awaited):
    until then its lock is live and a resume is rightly refused."""
    from geonorm_core.durable import LOCK_NAME

    try:
        pid = int((out / LOCK_NAME).read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return   # exited; a zombie nobody reaped holds no file
        except FileNotFoundError:
            return
        time.sleep(0.01)


def test_torchrun_killed_with_sigkill_resumes_to_the_uninterrupted_report(tiny_checkpoint, two_processes,
                                                                          one_process, tmp_path):
    if TORCHRUN is None:
        pytest.skip("torchrun is not on PATH")
    from geonorm_core.sources.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "killed"
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "geonorm_core.cli",
           "analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ranks = children(proc.pid)   # torchrun starts its workers in sessions of their own
    assert len(ranks) == 2, ranks
    for pid in (proc.pid, *ranks):   # torchrun and both ranks at once
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_until_dead(out)
    saved = load_checkpoint(out)
    assert saved is not None and not saved.complete and 0 < saved.tokens < 3000
    assert len(saved.ranks) == 2  # each rank's own state: the same split resumes bitwise

    done = torchrun("analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_report(two_processes[0], read(out), bitwise=True)

    # another number of processes (one here): the whole so far goes to rank 0
    save_checkpoint(out, saved)  # back to the killed run's checkpoint
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out), "--resume"]) == 0
    assert_same_report(one_process, read(out))


def test_torchrun_analyze_dump_splits_the_shards(tiny_checkpoint, tmp_path):
    dump = tmp_path / "dump"
    assert cli.main(["dump", "--model", tiny_checkpoint, "--max-tokens", "1500", "--seq-len", "64",
                     "--shard-rows", "400", "--out", str(dump)]) == 0
    assert cli.main(["analyze-dump", str(dump), "--out", str(tmp_path / "one")]) == 0
    done = torchrun("analyze-dump", str(dump), "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert one["meta"] == two["meta"]
    assert_same_report(one, two)


def test_torchrun_refuses_part_and_device_map(tiny_checkpoint, tmp_path):
    done = torchrun("analyze", "--model", tiny_checkpoint, "--part", "0/2", "--out", str(tmp_path / "x"),
                    timeout=120)
    assert done.returncode != 0 and "--part under torchrun" in done.stderr


# -- the library inside a process group -----------------------------------------------------------

def ranks(scenario: str, out: Path, world: int = 2, timeout: float = 180) -> list[int]:
    """Start ``world`` ranks of dist_worker.py as torchrun would; their exit codes."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), scenario, str(out)],
                              env=env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port, GEONORM_DIST_TIMEOUT="30"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for r in range(world)]
    codes = []
    try:
        for p in procs:
            p.wait(timeout=timeout)
            codes.append(p.returncode)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return codes


def test_analyze_in_a_process_group_returns_the_merged_report_on_every_rank(tmp_path):
    import dist_worker
    from tiny_models import tiny

    import geonorm_core as gn

    assert ranks("analyze", tmp_path) == [0, 0]
    whole = gn.analyze(tiny("llama"), dist_worker.batches()).to_dict()
    merged = [json.loads((tmp_path / f"merged-{r}.json").read_text()) for r in range(2)]
    assert merged[0] == merged[1]  # every rank: the same report, merged in rank order
    assert_same_report(whole, merged[0])
    assert json.loads((tmp_path / "analyzer-0.json").read_text()) == merged[0]  # Analyzer.report() too
    own = [json.loads((tmp_path / f"own-{r}.json").read_text()) for r in range(2)]
    first = next(iter(whole["sites"]))
    assert [o["sites"][first]["tokens"] for o in own] == [72, 72]  # merge_ranks=False: each rank's own


def test_a_failing_rank_fails_every_rank_with_its_error(tmp_path):
    t0 = time.monotonic()
    assert ranks("bad-batch", tmp_path) == [1, 1]
    errors = [(tmp_path / f"error-{r}.txt").read_text() for r in range(2)]
    assert "input_ids" in errors[1] and errors[0].startswith("RankFailed: rank 1: ")
    assert "input_ids" in errors[0] and "\n" not in errors[0]
    assert time.monotonic() - t0 < 150


def test_a_killed_rank_does_not_hang_the_others(tmp_path):
    t0 = time.monotonic()
    codes = ranks("killed", tmp_path)
    assert codes[1] == -signal.SIGKILL and codes[0] == 1
    error = (tmp_path / "error-0.txt").read_text()
    assert error.startswith("RankFailed: another process stopped answering rank 0")
    assert time.monotonic() - t0 < 150


# -- geonorm merge ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parts(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    for k in (0, 1):
        assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--part", f"{k}/2",
                         "--out", str(folder / f"p{k}")]) == 0
    return folder


def test_merging_the_parts_gives_the_whole_run(parts, one_process, tmp_path, capsys):
    out = tmp_path / "merged"
    assert cli.main(["merge", str(parts / "p0"), str(parts / "p1"), "--out", str(out)]) == 0
    assert "wrote 9 files" in capsys.readouterr().out
    merged = read(out)
    assert_same_report(one_process, merged)
    assert read(parts / "p1")["meta"]["batches"] == [[1, 12, 2]]
    assert merged["meta"]["batches"] == [[0, 12, 1]] and merged["meta"]["merged_from"] == 2
    assert {"tables.md", "sites.csv", "angle_per_layer.png"} <= {p.name for p in out.iterdir()}


def fails(capsys, argv, code) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_merge_refuses_to_count_tokens_twice(parts, one_process, tmp_path, capsys):
    p0 = str(parts / "p0")
    err = fails(capsys, ["merge", p0, p0, "--out", str(tmp_path / "x")], 1)
    assert err.startswith("geonorm merge: error:") and "same tokens" in err and "--disjoint" in err
    assert cli.main(["merge", p0, p0, "--disjoint", "--no-figures", "--out", str(tmp_path / "y")]) == 0
    assert read(tmp_path / "y")["sites"][next(iter(one_process["sites"]))]["tokens"] == \
        2 * read(p0)["sites"][next(iter(one_process["sites"]))]["tokens"]


def test_merge_refuses_reports_that_measure_other_things(parts, tiny_checkpoint, tmp_path, capsys):
    other = tmp_path / "other"
    assert cli.main(["analyze", "--model", tiny_checkpoint, "--max-tokens", "300", "--seq-len", "64",
                     "--bins", "90", "--exclude-first-token", "--out", str(other)]) == 0
    capsys.readouterr()
    err = fails(capsys, ["merge", str(parts / "p0"), str(other), "--out", str(tmp_path / "x")], 1)
    assert "differ in exclude_first_token, bins" in err
    err = fails(capsys, ["merge", str(parts / "p0"), str(tmp_path / "missing"),
                         "--out", str(tmp_path / "x")], 2)
    assert "no such report" in err


def test_merge_reports_library():
    from geonorm_core.analysis.accumulate import SiteStats

    def rep(values, **meta):
        s = SiteStats({"name": "n", "d": 4})
        s.update(angle_hidden=values)
        return Report(meta={"model": "M", "bins": 180, **meta}, sites={"n": s})

    a, b = rep([1.0, 2.0]), rep([3.0])
    merged = merge_reports([a, b])
    assert merged.sites["n"].tokens == 3 and a.sites["n"].tokens == 2  # inputs unchanged
    with pytest.raises(OverlappingReports, match="identical"):
        merge_reports([a, rep([1.0, 2.0])])
    with pytest.raises(IncompatibleReports, match="differ in model$"):
        merge_reports([a, rep([1.0], model="Other")])
    d8 = rep([1.0])
    d8.sites["n"].meta["d"] = 8
    with pytest.raises(IncompatibleReports, match="differ in d"):
        merge_reports([a, d8])
    assert batch_ranges([1, 3, 5, 0]) == [[0, 2, 1], [3, 6, 2]] or batch_set(batch_ranges([1, 3, 5, 0])) == {
        0, 1, 3, 5}
    assert batch_set(batch_ranges(range(0, 100, 3))) == set(range(0, 100, 3))
    assert batch_ranges(range(2, 50, 4)) == [[2, 47, 4]]


def test_only_distributed_py_calls_torch_distributed():
    """One home for the process-group logic (docs/ARCHITECTURE.md): no other module imports it."""
    import re

    package = HERE.parent / "geonorm_core"
    pattern = re.compile(r"^\s*(import torch\.distributed|from torch import distributed"
                         r"|from torch\.distributed)", re.MULTILINE)
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   if pattern.search(p.read_text()))
    assert users == ["sources/distributed.py"]
