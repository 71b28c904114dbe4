"""Models larger than one device: a checkpoint loaded by accelerate with a ``max_memory`` so small
that its layers go to disk (``offload_folder``).  Offloaded modules hold their weights on ``meta``
until accelerate's hook loads them for the forward; geonorm finds their sites and measures them
with the weights the forward uses."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import geonorm_core as gn
from geonorm_core import cli

pytestmark = pytest.mark.slow   # accelerate offloads layers to disk: the full tier only

MAX_MEMORY = {"cpu": "4MB"}  # the embeddings and layer 0 stay in memory, the rest goes to disk


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny Llama with learned-looking norm gains (not all ones), saved with save_pretrained."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("tiny-gains")
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(checkpoint, tmp_path_factory):
    plain, _ = gn.load_model(checkpoint)
    offloaded, _ = gn.load_model(checkpoint, device_map="auto", max_memory=MAX_MEMORY,
                                 offload_folder=tmp_path_factory.mktemp("offload"))
    return plain, offloaded


def batches(n: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(3, 1000, (2, 16), generator=gen)} for _ in range(n)]


def test_layers_really_went_to_disk(models):
    _, offloaded = models
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
    weight = offloaded.get_submodule("model.layers.1.input_layernorm").weight
    assert weight.device.type == "meta"


def test_offloaded_sites_are_found_with_the_gains_the_forward_uses(models):
    plain, offloaded = models
    found, expected = gn.find_norm_sites(offloaded), gn.find_norm_sites(plain)
    assert [s.name for s in found] == [s.name for s in expected] and len(found) == 7
    for a, b in zip(found, expected):
        assert a.kind == b.kind and a.verified and np.array_equal(a.gain, b.gain)
        assert not np.all(a.gain == 1.0)
    # left as found
    assert offloaded.get_submodule("model.layers.1.input_layernorm").weight.device.type == "meta"


def test_analyze_an_offloaded_model_gives_the_plain_models_report(models):
    plain, offloaded = models
    a, b = gn.analyze(offloaded, batches()), gn.analyze(plain, batches())
    assert a.sites.keys() == b.sites.keys()
    for name in a.sites:
        assert a.sites[name].tokens == b.sites[name].tokens == 96
        for q in ("angle_hidden", "angle_post", "rotation", "ln_rms_gap", "norm_hidden"):
            ma, mb = a.sites[name][q], b.sites[name][q]
            assert ma.count == mb.count and abs(ma.mean - mb.mean) <= 1e-9 * max(1.0, abs(mb.mean)), (name, q)


def test_monitor_and_dump_accept_an_offloaded_model(models, tmp_path):
    plain, offloaded = models
    monitor = gn.GeometryMonitor(offloaded, every=1)
    with monitor:
        for step, batch in enumerate(batches(2)):
            monitor.step(step)
            with torch.no_grad():
                offloaded(**batch)
        monitor.finish()
    assert sorted(monitor.timeline.reports) == [0, 1]
    gn.dump(offloaded, batches(2), tmp_path / "dump")
    from_disk = gn.analyze_dump(tmp_path / "dump")
    live = gn.analyze(plain, batches(2))
    for name in live.sites:
        assert from_disk.sites[name].tokens == live.sites[name].tokens
        assert abs(from_disk.sites[name].ln_rms_gap.mean - live.sites[name].ln_rms_gap.mean) < 1e-6


def test_cli_device_map_max_memory_offload_folder(checkpoint, tmp_path, capsys):
    common = ["analyze", "--model", checkpoint, "--max-tokens", "400", "--seq-len", "32"]
    assert cli.main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*common, "--device-map", "auto", "--max-memory", "cpu=4MB",
                     "--offload-folder", str(tmp_path / "off"), "--out", str(tmp_path / "mapped")]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    mapped = json.loads((tmp_path / "mapped" / "report.json").read_text())
    assert mapped["meta"]["device_map"] == "auto" and mapped["meta"]["placement"] == {"cpu": 2, "disk": 5}
    for name, site in plain["sites"].items():
        for q, quantity in site["quantities"].items():
            a, b = quantity["moments"], mapped["sites"][name]["quantities"][q]["moments"]
            assert a["count"] == b["count"] and abs(a["mean"] - b["mean"]) <= 1e-9 * max(1.0, abs(a["mean"]))
    capsys.readouterr()
    assert cli.main(["analyze", "--model", checkpoint, "--device", "cpu", "--device-map", "auto",
                     "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--device cpu and --device-map auto: choose one" in err and err.count("\n") == 1
    assert cli.main(["analyze", "--model", checkpoint, "--max-memory", "cpu=1GiB",
                     "--out", str(tmp_path / "x")]) == 2
    assert "--max-memory needs --device-map" in capsys.readouterr().err
