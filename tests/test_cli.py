"""The `geonorm` command's own plumbing (the subcommands' work is tested where it lives)."""
import json

import pytest

from geonorm_core import cli


def test_info_prints_the_active_path(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd"] in info["available"]


def test_prove_passes_its_options_through(capsys):
    """`geonorm prove --json ...`: options go to the proofs' parser, not geonorm's."""
    pytest.importorskip("geonorm_core.proofs", reason="proofs/ maps to geonorm_core.proofs when installed")
    assert cli.main(["prove", "--json", "--only", "G5", "--no-crosscheck"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in report["identities"]] == ["G5"]


def test_bench_rejects_an_unknown_op():
    with pytest.raises(ValueError, match="op must be"):
        from geonorm_core import bench

        bench.bench_case("nope", 64, 16, "fp32", repeats=1)


def test_bench_interleaved_ratios_are_measured(capsys):
    from geonorm_core import bench

    r = bench.rows_per_second_vs_fp32(rows=64, d=256, repeats=3)
    assert set(r) == {"bf16", "fp16"}
    for v in r.values():
        assert 0 < v["min"] <= v["median"] <= v["max"] < 100
    table = bench.ratio_table(r, "64x256")
    assert table.count("\n") == 3 and "| bf16 | 64x256 |" in table


# -- failing early and clearly ------------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def fails(capsys, argv, code):
    """Run the command; it must exit with ``code`` and print exactly one error line, no traceback."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"geonorm {argv[0]}: error: "), err
    return err[0]


def usage_fails(capsys, argv):
    """argparse's own usage errors: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"geonorm {argv[0]}: error: "), err
    return err[0]


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "report")


def test_an_unknown_model_is_a_usage_error(capsys, out):
    line = fails(capsys, ["analyze", "--model", "no-such-model-anywhere", "--out", out], 2)
    assert "no-such-model-anywhere" in line and "Short names" in line


def test_a_missing_text_is_a_usage_error(capsys, out, tmp_path):
    line = fails(capsys, ["analyze", "--text", str(tmp_path / "nope.txt"), "--out", out], 2)
    assert "nope.txt: no such file" in line


def test_a_text_that_is_not_utf8_is_bad_data(capsys, out, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    line = fails(capsys, ["analyze", "--text", str(bad), "--out", out], 1)
    assert "latin1.txt" in line and "UTF-8" in line


@pytest.mark.parametrize("option", ["--max-tokens", "--seq-len", "--batch-size", "--bins", "--checkpoint-every"])
def test_zero_counts_are_usage_errors(capsys, out, option):
    line = usage_fails(capsys, ["analyze", option, "0", "--out", out])
    assert option in line and "at least 1" in line


def test_cuda_without_cuda_is_a_usage_error(capsys, out):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = fails(capsys, ["analyze", "--device", "cuda", "--out", out], 2)
    assert "--device cuda" in line and "CUDA is not available" in line


def test_a_bad_dtype_is_a_usage_error(capsys, out):
    line = fails(capsys, ["analyze", "--dtype", "int8", "--out", out], 2)
    assert "--dtype int8" in line


def test_an_unwritable_out_fails_before_any_model_loads(capsys, tmp_path):
    """Root can write anywhere it has permission bits for, so make the folder impossible: under a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    line = fails(capsys, ["analyze", "--out", str(blocker / "report")], 2)
    assert "cannot write there" in line and time.perf_counter() - t0 < 5
    line = fails(capsys, ["swap-test", "--out", str(blocker / "swap")], 2)
    assert "cannot write there" in line
    line = fails(capsys, ["dump", "--out", str(blocker / "dump")], 2)
    assert "cannot write there" in line


def test_analyze_dump_on_files_that_are_not_arrays(capsys, tmp_path, out):
    junk = tmp_path / "notes.npy"
    junk.write_text("these are not the arrays you are looking for")
    line = fails(capsys, ["analyze-dump", str(junk), "--out", out], 1)
    assert "notes.npy" in line
    short = tmp_path / "short.npy"
    np.save(short, np.ones((100, 16), np.float32))
    short.write_bytes(short.read_bytes()[:-200])  # truncated
    line = fails(capsys, ["analyze-dump", str(short), "--out", out], 1)
    assert "short.npy" in line
    line = fails(capsys, ["analyze-dump", str(tmp_path / "missing"), "--out", out], 2)
    assert "no such file or folder" in line


def test_debug_shows_the_traceback(out, monkeypatch):
    with pytest.raises(ValueError, match="no-such-model"):
        cli.main(["analyze", "--model", "no-such-model", "--out", out, "--debug"])
    monkeypatch.setenv("GEONORM_DEBUG", "1")
    with pytest.raises(ValueError, match="no-such-model"):
        cli.main(["analyze", "--model", "no-such-model", "--out", out])


def test_an_internal_bug_keeps_its_traceback(out, monkeypatch):
    def broken(args):
        {}["a key the code forgot"]

    monkeypatch.setattr(cli.COMMANDS["info"], "run", broken)
    with pytest.raises(KeyError):
        cli.main(["info"])

    def numpy_bug(args):
        np.zeros(3).reshape(4)  # a ValueError raised outside geonorm is a bug, not the user's error

    monkeypatch.setattr(cli.COMMANDS["info"], "run", numpy_bug)
    with pytest.raises(ValueError):
        cli.main(["info"])


# -- never losing a run: checkpoints, Ctrl-C, SIGKILL and --resume --------------------------------

RUN = ["--max-tokens", "6000", "--seq-len", "64", "--batch-size", "4", "--checkpoint-every", "200"]


def run_until_checkpoint(model, out, sig):
    """Start `geonorm analyze` in a subprocess, send ``sig`` once its first checkpoint is on disk."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "geonorm_core.cli", "analyze", "--model", model, *RUN,
                             "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    checkpoint = Path(out) / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout.decode(), stderr.decode()


@pytest.fixture(scope="session")
def uninterrupted(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "report"
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def test_a_killed_run_resumes_to_the_uninterrupted_report(tiny_checkpoint, uninterrupted, tmp_path, capsys):
    from geonorm_core.checkpoint import load_checkpoint

    out = str(tmp_path / "killed")
    code, _, _ = run_until_checkpoint(tiny_checkpoint, out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = load_checkpoint(out)
    assert not saved.complete and 0 < saved.tokens < 6000  # killed mid-way, with work saved
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", out]) == 2  # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", out, "--resume"]) == 0
    assert json.loads((Path(out) / "report.json").read_text()) == uninterrupted
    assert load_checkpoint(out).complete


def test_ctrl_c_writes_a_partial_report_and_exits_130(tiny_checkpoint, uninterrupted, tmp_path, capsys):
    out = str(tmp_path / "interrupted")
    code, stdout, stderr = run_until_checkpoint(tiny_checkpoint, out, signal.SIGINT)
    assert code == 130, stderr[-2000:]
    partial = json.loads((Path(out) / "report.json").read_text())
    assert partial["meta"]["partial"] is True and 0 < partial["meta"]["tokens"] < 6000
    assert f"(partial: {partial['meta']['tokens']} tokens)" in stdout and "--resume" in stderr
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", out, "--resume"]) == 0
    assert json.loads((Path(out) / "report.json").read_text()) == uninterrupted


def test_resume_with_other_settings_is_refused(tiny_checkpoint, uninterrupted, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert cli.main(["analyze", "--model", tiny_checkpoint, *RUN, "--out", out, "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    run_until_checkpoint(tiny_checkpoint, out, signal.SIGKILL)
    t0 = time.perf_counter()
    line = fails(capsys, ["analyze", "--model", tiny_checkpoint, *RUN,
                          "--bins", "90", "--out", out, "--resume"], 1)
    assert "bins: 180 then, 90 now" in line and time.perf_counter() - t0 < 5  # before the model loads


def test_backend_option_reaches_the_analysis(tiny_checkpoint, tmp_path):
    """`--backend torch` computes on the tensors' device (here the CPU): same numbers as the core."""
    reports = {}
    for backend in ("core", "torch"):
        out = tmp_path / backend
        assert cli.main(["analyze", "--model", tiny_checkpoint, "--max-tokens", "600", "--seq-len", "64",
                         "--backend", backend, "--out", str(out)]) == 0
        reports[backend] = json.loads((out / "report.json").read_text())
    core, torch_ = reports["core"]["sites"], reports["torch"]["sites"]
    assert core.keys() == torch_.keys()
    for name in core:
        for q in ("angle_hidden", "rotation"):
            a, b = core[name]["quantities"][q]["moments"], torch_[name]["quantities"][q]["moments"]
            assert a["count"] == b["count"] > 0 and abs(a["mean"] - b["mean"]) < 1e-4  # the contract, degrees
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--backend", "gpu"])
