"""Attribution patching: TL's node scores, per-query-head k/v that add up to the shared slot, and agreement
with exact patching."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis.attribution_patching import attribution_patch

from codecircuits import attribution, patching
from codecircuits.errors import InputError
from codecircuits.models import kv_groups
from codecircuits.testing import toy_metric


def test_node_scores_equal_transformer_lens(tiny, pair):
    """Head outputs (attn.hook_z) and MLP outputs by layer and position: TL's attribution_patch numbers."""
    clean, corr, _ = pair(tiny)
    tl = attribution_patch(tiny, clean, corr, lambda logits: toy_metric(logits).sum())
    check_node_scores(tiny, clean, corr, toy_metric, tl.node_scores)


def check_node_scores(model, clean, corr, metric, node_scores: dict, atol: float = 1e-4):
    """Our head-output and MLP-output attributions by (layer, pos[, head]) equal TL's ``node_scores``."""
    z = attribution.sweep(model, clean, corr, metric, site="z", by=("layer", "pos", "head"), progress=False)
    mlp = attribution.sweep(model, clean, corr, metric, site="mlp_out", progress=False)
    n_checked = 0
    for node, score in node_scores.items():
        if node.kind == "attn_head_out":
            ours = z.effect[node.layer, node.position, node.head]
        elif node.kind == "mlp_out":
            ours = mlp.effect[node.layer, node.position]
        else:
            continue
        assert abs(float(ours) - score) <= atol, (node, float(ours), score)
        n_checked += 1
    assert n_checked == model.cfg.n_layers * clean.shape[1] * (model.cfg.n_heads + 1)


@pytest.mark.parametrize("site", ["k", "v"])
def test_query_heads_add_up_to_their_slot(tiny, pair, site):
    """The slot's attribution is the sum of its query heads' (exact linear decomposition, GQA/MQA included)."""
    clean, corr, _ = pair(tiny)
    per_head = attribution.sweep(tiny, clean, corr, toy_metric, site=site, by=("layer", "pos", "head"), progress=False)
    per_slot = attribution.sweep(
        tiny, clean, corr, toy_metric, site=site, by=("layer", "pos", "kv_head"), progress=False
    )
    for g, heads in enumerate(kv_groups(tiny)):
        torch.testing.assert_close(
            per_head.effect[..., list(heads)].sum(-1), per_slot.effect[..., g], atol=1e-5, rtol=1e-4
        )
    assert per_head.values.shape[-1] == tiny.cfg.n_heads


def test_agrees_with_exact_patching(tiny, pair):
    """A first-order estimate: on the residual stream it ranks cells like exact patching does."""
    clean, corr, _ = pair(tiny)
    est = attribution.sweep(tiny, clean, corr, toy_metric, site="resid_pre", exact=True, progress=False)
    assert est.exact is not None and est.exact.shape == est.shape
    assert est.rank_correlation == pytest.approx(attribution.spearman(est.effect, est.exact.effect))
    assert est.rank_correlation > 0.5
    d = patching.first_difference(clean, corr)
    assert torch.equal(est.effect[:, :d], torch.zeros_like(est.effect[:, :d]))  # unchanged prefix: exactly 0
    # the last layer's residual at the last position feeds the logits through the final norm only:
    # the estimate is first-order there, but its sign must agree with the exact effect
    assert torch.sign(est.effect[-1, -1]) == torch.sign(est.exact.effect[-1, -1])


def test_neurons_and_noising(tiny, pair):
    clean, corr, _ = pair(tiny)
    n = clean.shape[1]
    est = attribution.sweep(
        tiny, clean, corr, toy_metric, site="post", neurons=[0, 5], positions=[n - 1], into="clean", progress=False
    )
    assert est.axes == ("layer", "neuron") and est.values.shape == (tiny.cfg.n_layers, 2)
    torch.testing.assert_close(est.base, toy_metric(tiny(clean)), atol=1e-4, rtol=0)
    assert est.labels["neuron"] == [0, 5]


def test_spearman():
    assert attribution.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(1)
    assert attribution.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1)
    with pytest.raises(InputError):
        attribution.spearman(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
