"""A real model, end to end: SmolLM2-135M's report against an independent float64 computation.

The reference takes the residual stream from ``output_hidden_states`` (the input of
each block's first norm), runs each block's ``input_layernorm`` module on it, and
computes every quantity with float64 NumPy; the report must agree.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geonorm_core import slow  # noqa: E402
from geonorm_core.sources.adapter import analyze  # noqa: E402


@pytest.fixture(scope="module")
def tokens(smollm2):
    _, tok = smollm2
    text = ("The geometry of a hidden vector is simple: a component along the uniform vector, "
            "and everything orthogonal to it. Layer normalization removes the first, ")
    enc = tok([text, text[::-1][:80]], return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_report_matches_output_hidden_states(smollm2, tokens):
    model, _ = smollm2
    report = analyze(model, [tokens])
    with torch.inference_mode():
        out = model(**tokens, output_hidden_states=True)
    mask = tokens["attention_mask"].numpy() != 0
    layers = model.model.layers
    assert len(out.hidden_states) == len(layers) + 1
    for i, layer in enumerate(layers):
        h_t = out.hidden_states[i]
        with torch.inference_mode():
            p_t = layer.input_layernorm(h_t)
        h = h_t.double().numpy()[mask]
        p = p_t.double().numpy()[mask]
        site = report.sites[f"model.layers.{i}.input_layernorm"]
        assert site.tokens == int(mask.sum())
        dh, dp = slow.decompose(h), slow.decompose(p)
        gain = layer.input_layernorm.weight.detach().double().numpy()
        eps = layer.input_layernorm.variance_epsilon
        ln = slow.layer_norm(h, eps=eps) * gain
        rms = slow.rms_norm(h, eps=eps) * gain
        ref = {
            "angle_hidden": dh.angle, "angle_post": dp.angle, "norm_hidden": dh.norm, "norm_post": dp.norm,
            "max_abs_hidden": np.abs(h).max(-1), "rotation": slow.rotation(h, p),
            "ln_rms_gap": np.linalg.norm(ln - rms, axis=-1) / np.linalg.norm(ln, axis=-1),
        }
        for q, r in ref.items():
            scale = max(1.0, float(np.abs(r).max()))
            tol = 2e-4 if q.startswith(("angle", "rotation")) else 1e-6 * scale
            assert site[q].mean == pytest.approx(r.mean(), abs=tol), (i, q)
            assert site[q].std == pytest.approx(r.std(), abs=tol), (i, q)
            assert site[q].max == pytest.approx(r.max(), abs=tol), (i, q)


def test_paper_finding_holds_on_smollm2(smollm2, tokens):
    """SmolLM2's residual stream sits within a few degrees of 90° from 1."""
    model, _ = smollm2
    report = analyze(model, [tokens])
    rows = report.layers()
    assert len(rows) == 30
    means = np.array([r["hidden_angle"][0] for r in rows])
    assert np.all(np.abs(means - 90) < 5), means
    norms = np.array([r["hidden_norm"][0] for r in rows])
    assert norms[-1] > 10 * norms[0]  # the residual stream grows through the stack
