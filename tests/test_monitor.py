"""GeometryMonitor on tiny GPT-2s trained for a few steps: when it records, that it leaves training
bitwise unchanged, that its numbers are an Analyzer's, the Trainer callback, and the files."""
import copy
import csv
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from geonorm_core.analysis.baseline import null_abs_cos  # noqa: E402
from geonorm_core.experiments.monitor import GeometryMonitor, Timeline  # noqa: E402
from geonorm_core.sources.adapter import Analyzer  # noqa: E402

VOCAB, SEQ = 61, 12


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices: a second thread only contends (and the CI box has two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).train()


def batch(i, b=3, pad=True):
    g = torch.Generator().manual_seed(100 + i)
    ids = torch.randint(0, VOCAB, (b, SEQ), generator=g)
    mask = torch.ones(b, SEQ, dtype=torch.long)
    if pad:
        mask[0, 8:] = 0
        mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def train(model, steps, monitor=None, *, api="record", lr=1e-2, micro=1, before_step=None):
    """AdamW on fixed batches; the monitor (if any) through its plain-loop API. Returns the losses."""
    torch.manual_seed(1234)  # dropout draws
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        if monitor is not None and api == "step":
            monitor.step(step)
        for m in range(micro):
            bt = batch(step * micro + m)
            ctx = monitor.record(step) if monitor is not None and api == "record" else _null()
            with ctx:
                out = model(**bt, labels=bt["input_ids"])
            (out.loss / micro).backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.detach())
        if monitor is not None:
            monitor.log(step, loss=out.loss)
    return losses


class _null:
    def __enter__(self):
        return False

    def __exit__(self, *exc):
        return None


def hooks_on(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["record", "step"])
def test_records_only_the_steps_k_n_and_nothing_stays_hooked(api):
    model = tiny()
    seen = []

    def check(step):  # between recordings the model carries no hook at all
        seen.append(hooks_on(model))

    with GeometryMonitor(model, every=3) as mon:
        train(model, 8, mon, api=api, before_step=check)
    assert mon.timeline.steps == [0, 3, 6]
    assert hooks_on(model) == 0
    # record(): nothing between steps; step(): step k stays recorded (5 site hooks + the model
    # pre-hook) until step k + 1
    assert seen == ([0] * 8 if api == "record" else [0, 6, 0, 0, 6, 0, 0, 6])
    real = sum(int(batch(s)["attention_mask"].sum()) for s in (0, 3, 6))
    assert sum(mon.timeline[s].tokens for s in mon.timeline.steps) == real
    assert sorted(mon.timeline.scalars["loss"]) == list(range(8))
    # not attached: nothing is recorded
    idle = GeometryMonitor(model, every=1)
    train(model, 2, idle)
    assert len(idle.timeline) == 0 and hooks_on(model) == 0


@pytest.mark.parametrize("api", ["record", "step"])
def test_training_with_the_monitor_is_bitwise_the_same(api):
    # dropout on: the hooks must not draw from the global RNG either
    plain = tiny(dropout=0.1)
    watched = copy.deepcopy(plain)
    ref_losses = train(plain, 6, micro=2)
    with GeometryMonitor(watched, every=2, exclude_first_token=True, max_tokens_per_step=40) as mon:
        losses = train(watched, 6, mon, api=api, micro=2)
    assert mon.timeline.steps == [0, 2, 4]
    assert all(torch.equal(a, b) for a, b in zip(ref_losses, losses))
    for (name, p), q in zip(plain.named_parameters(), watched.parameters()):
        assert torch.equal(p, q), name


def test_a_recorded_step_equals_an_analyzer_run_on_the_same_model_state():
    model = tiny()
    expected = {}

    def reference(step):  # the same model state and inputs, measured by the Analyzer
        if step % 2 == 0:
            with Analyzer(model, exclude_first_token=True) as an:
                an.feed(batch(step))
            expected[step] = an.report()

    with GeometryMonitor(model, every=2, exclude_first_token=True) as mon:
        train(model, 5, mon, before_step=reference)
    assert mon.timeline.steps == [0, 2, 4] == sorted(expected)
    first_gain = None
    for step, ref in expected.items():
        got = mon.timeline[step]
        assert set(got.sites) == set(ref.sites) and len(got.sites) == 5
        for name, site in ref.sites.items():
            g = got.sites[name]
            assert g.tokens == site.tokens == int(batch(step)["attention_mask"].sum()) - 3
            for qname, q in site.quantities.items():
                gq = g[qname]
                assert gq.count == q.count
                np.testing.assert_allclose([gq.mean, gq.std, gq.min, gq.max], [q.mean, q.std, q.min, q.max],
                                           rtol=1e-6, atol=1e-9, err_msg=f"{step} {name} {qname}")
        gap = got.sites["transformer.h.0.ln_1"].ln_rms_gap.mean
        first_gain = gap if first_gain is None else first_gain
    # the gains and biases moved, and the gap followed them (a stale gain would not)
    assert mon.timeline[4].sites["transformer.h.0.ln_1"].ln_rms_gap.mean != first_gain


def test_max_tokens_per_step_counts_the_first_real_tokens_across_micro_batches():
    model = tiny()
    with GeometryMonitor(model, every=1, max_tokens_per_step=30) as mon:
        train(model, 2, mon, micro=2)
    for step in (0, 1):
        assert mon.timeline[step].tokens == 30
    with GeometryMonitor(model, every=1, max_tokens_per_step=1000) as mon:
        train(model, 1, mon, micro=2)
    assert mon.timeline[0].tokens == int(batch(0)["attention_mask"].sum() + batch(1)["attention_mask"].sum())


def test_trainer_callback_records_every_k_global_steps(tmp_path):
    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": ids}

    def run(with_monitor):
        model = tiny()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
            max_steps=5, learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
            seed=0, dataloader_num_workers=0, disable_tqdm=True)
        mon = GeometryMonitor(model, every=2)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                       callbacks=[mon.as_trainer_callback()] if with_monitor else [])
        trainer.train()
        return model, mon

    model, mon = run(True)
    assert mon.timeline.steps == [0, 2, 4]
    assert all(mon.timeline[s].tokens == 2 * 2 * SEQ for s in mon.timeline.steps)  # both micro-batches
    assert sorted(mon.timeline.scalars["loss"]) == [1, 2, 3, 4, 5]
    assert not mon.attached and hooks_on(model) == 0
    from geonorm_core.experiments.monitor import GeometryCallback

    assert issubclass(GeometryCallback, transformers.TrainerCallback)
    with pytest.raises(ValueError, match="same model"):
        GeometryCallback(mon).on_train_begin(None, None, None, model=tiny())
    plain, _ = run(False)
    for (name, p), q in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name


def test_json_and_csv_round_trip_and_the_plot(tmp_path):
    model = tiny()
    with GeometryMonitor(model, every=2, meta={"run": "t"}) as mon:
        train(model, 5, mon)
    tl = mon.timeline
    tl.scalars["loss"][3] = None  # a non-finite loss survives as null/NaN
    tl.to_json(tmp_path / "t.json")
    back = Timeline.from_json(tmp_path / "t.json")
    assert back.to_dict() == tl.to_dict() and back.meta["run"] == "t" and back.meta["every"] == 2
    assert json.loads(json.dumps(back.to_dict())) == tl.to_dict()

    tl.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "site", "layer", "role", "quantity", "mean", "std", "count"]
    site_rows = [r for r in rows if r["site"]]
    assert len(site_rows) == 3 * 5 * 7
    for r in site_rows:
        q = tl[int(r["step"])].sites[r["site"]][r["quantity"]]
        assert float(r["mean"]) == q.mean and float(r["std"]) == q.std and int(r["count"]) == q.count
        assert r["role"] == tl[int(r["step"])].sites[r["site"]].meta["role"]
    loss = {int(r["step"]): float(r["mean"]) for r in rows if r["quantity"] == "loss"}
    assert math.isnan(loss.pop(3)) and loss == {s: v for s, v in tl.scalars["loss"].items() if v is not None}

    steps, means, sds = tl.series("hidden_angle")[1]
    assert list(steps) == [0, 2, 4] and np.all(np.abs(means - 90) < 30) and np.all(sds > 0)
    path = tl.plot(tmp_path / "t.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20_000


def test_bad_arguments_are_named():
    model = tiny()
    for kw, word in (({"every": 0}, "every"), ({"max_tokens_per_step": 0}, "max_tokens_per_step"),
                     ({"sites": ["nope"]}, "sites"), ({"meta": {"x": object()}}, "meta")):
        with pytest.raises((ValueError, TypeError), match=word):
            GeometryMonitor(model, **kw)
    with pytest.raises(ValueError, match="format"):
        Timeline.from_dict({"format": 99})


def test_null_abs_cos_is_exact_where_known_and_matches_sampling():
    assert null_abs_cos(2) == pytest.approx(2 / math.pi, rel=1e-14)   # uniform angle on the circle
    assert null_abs_cos(3) == pytest.approx(0.5, rel=1e-14)           # cos uniform on [-1, 1] on S^2
    x = np.random.default_rng(0).standard_normal((200_000, 128))
    cos = x.sum(1) / np.sqrt(128) / np.linalg.norm(x, axis=1)
    assert null_abs_cos(128) == pytest.approx(np.abs(cos).mean(), rel=0.01)
    assert null_abs_cos(128) == pytest.approx(math.sqrt(2 / (math.pi * 128)), rel=0.01)
