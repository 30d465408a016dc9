"""Circuit discovery on every family of the matrix: the graph, EAP / EAP-IG against exact edge patching and against
TransformerLens's own attribution_patch, the grouped and ungrouped views, selection, batched evaluation, MIB's
areas and EAP-IG's files."""

from __future__ import annotations

import json

import pytest
import torch

from codecircuits.circuits import (
    METHODS,
    Graph,
    areas,
    circuit_metric,
    edge_scores,
    exact_edge_scores,
    faithfulness_curves,
    faithfulness_stat,
    from_transformer_lens,
    read_eapig,
    write_eapig,
)
from codecircuits.core.metrics import rowwise
from codecircuits.core.sites import LN_FINAL_SCALE
from codecircuits.errors import InputError, UnsupportedArchitectureError
from codecircuits.testing import PAIR_CLEAN, PAIR_CORRUPTED, toy_metric


@pytest.fixture
def toks(tiny, family):
    return tiny.to_tokens(list(PAIR_CLEAN)), tiny.to_tokens(list(PAIR_CORRUPTED))


def _frozen_final_scale(model, clean):
    _, cache = model.run_with_cache(clean, names_filter=LN_FINAL_SCALE)
    scale = cache[LN_FINAL_SCALE]
    return [(LN_FINAL_SCALE, lambda act, hook=None: scale.repeat(act.shape[0] // scale.shape[0], 1, 1).to(act.dtype))]


def test_graph_sizes_names_and_parallel_blocks(tiny, family):
    cfg = tiny.cfg
    g, u = Graph.from_model(tiny), Graph.from_model(tiny, grouped=False)
    L, H = cfg.n_layers, cfg.n_heads
    assert u.n_sources == g.n_sources == 1 + L * (H + 1)
    assert u.n_destinations == L * (3 * H + 1) + 1  # EAP-IG's count
    kv = cfg.n_key_value_heads or H
    assert g.n_destinations == L * (H + 2 * kv + 1) + 1
    assert (g.n_edges < u.n_edges) == (kv < H)
    for graph in (g, u):
        for name in graph.edge_names():
            assert graph.edge_name(*graph.edge_index(name)) == name
    same_layer_head_to_mlp = bool(g.valid[g.head_source(0, 0), g.mlp_destination(0)])
    assert same_layer_head_to_mlp == (not cfg.parallel_attn_mlp)
    assert not g.valid[g.mlp_source(0), g.q_destination(0)]  # nothing flows backwards
    assert g.valid[:, g.logits_destination].all()


def test_post_norm_blocks_are_refused_by_name():
    from codecircuits.testing import tiny_model

    with pytest.raises(UnsupportedArchitectureError, match=r"blocks\.0 .*normalises its attention or MLP output"):
        Graph.from_model(tiny_model("gemma3"))


def test_destination_inputs_are_the_models_own(family, tiny, toks):
    """Through the taps every method reads and replaces destination inputs with, an unmodified run is the model's
    own forward; CodeGen's bridge has no split q/k/v inputs, so its heads' projections are recomputed."""
    from codecircuits.circuits.hooks import input_mode, input_taps, split_inputs

    clean, _ = toks
    assert input_mode(tiny) == ("recompute" if family == "codegen" else "split")
    g = Graph.from_model(tiny)
    seen = []

    def same(kind, act):
        seen.append(kind)
        return act.clone()

    with torch.no_grad(), split_inputs(tiny):
        want = tiny(clean)
        hooks = [h for layer in range(g.n_layers) for h in input_taps(tiny, g, layer, same)]
        got = tiny.run_with_hooks(clean, fwd_hooks=hooks)
    assert sorted(set(seen)) == ["k", "mlp", "q", "v"] and len(seen) == 4 * g.n_layers
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_eap_equals_exact_patching_where_first_order_is_exact(tiny, toks):
    """Edges into the logits, the final norm's scale frozen, a metric linear in the logits: EAP is exact."""
    clean, corr = toks
    freeze = _frozen_final_scale(tiny, clean)
    eap = edge_scores(tiny, clean, corr, toy_metric, method="EAP", fwd_hooks=freeze)
    exact = exact_edge_scores(tiny, clean, corr, toy_metric, fwd_hooks=freeze)
    d = eap.graph.logits_destination
    assert exact.scores[:, d].abs().max() > 1e-3
    torch.testing.assert_close(eap.scores[:, d], exact.scores[:, d], atol=1e-5, rtol=1e-4)


def test_eap_ig_approaches_exact_patching_as_steps_grow(tiny, toks):
    clean, corr = toks
    exact = exact_edge_scores(tiny, clean, corr, toy_metric).scores.nan_to_num()
    err = {s: float((edge_scores(tiny, clean, corr, toy_metric, steps=s).scores - exact).abs().sum()) for s in (1, 20)}
    assert err[20] < 0.8 * err[1], err


def test_destination_scores_sum_to_the_destination_node_score(family, tiny, toks):
    """sum_u score(u -> v) = (x_v(corrupted) - x_v(clean)) . dm/dx_v, measured at v's own input hook."""
    if family == "codegen":
        pytest.skip("CodeGen's bridge has no hook_mlp_in to measure at independently")
    clean, corr = toks
    eap = edge_scores(tiny, clean, corr, toy_metric, method="EAP", direction="lower")  # the sign of the identity
    g, layer = eap.graph, tiny.cfg.n_layers - 1
    from codecircuits.circuits.hooks import split_inputs

    got = {}
    for name, dst in (
        (f"blocks.{layer}.hook_mlp_in", g.mlp_destination(layer)),
        ("ln_final.hook_in", g.logits_destination),
    ):
        with split_inputs(tiny):
            xs = {}
            for key, tokens in (("corr", corr), ("clean", clean)):
                _, cache = tiny.run_with_cache(tokens, names_filter=name)
                xs[key] = cache[name]
            box = {}

            def fork(act, hook=None, box=box):
                f = act.clone()
                f.register_hook(lambda gr: box.__setitem__("g", gr))
                return f

            leaf = {}

            def make_leaf(act, hook=None, leaf=leaf):
                leaf["x"] = act.detach().clone().requires_grad_(True)
                return leaf["x"]

            with torch.enable_grad(), tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", make_leaf), (name, fork)]):
                torch.autograd.grad(toy_metric(tiny(clean)).sum(), [leaf["x"]])
        node = float(((xs["corr"] - xs["clean"]) * box["g"]).sum()) / clean.shape[0]
        got[name] = (float(eap.scores[:, dst].sum()), node)
        assert abs(got[name][0] - node) < 1e-4 + 1e-3 * abs(node), got


def test_equal_to_transformer_lens_attribution_patch(family, tiny, toks):
    """TL 4.3's edge mode (it accepts only models whose key/value heads equal the query heads and sequential
    blocks): its scores, summed over positions, equal ours with clean and corrupted swapped (its denoising sign)."""
    if family != "llama":
        pytest.skip("TransformerLens's edge mode refuses grouped-query, multi-query and parallel blocks")
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    clean, corr = toks
    res = attribution_patch(
        tiny, clean, corr, lambda lg: lg[0, -1, 5] - lg[0, -1, 7], EdgeAttributionConfig(granularity="edge")
    )
    ours = edge_scores(tiny, corr, clean, toy_metric, method="EAP", direction="lower")  # EAP-IG's sign, as TL
    tl = from_transformer_lens(res, ours.graph).scores
    assert tl.abs().max() > 1e-2
    assert (tl - ours.scores).abs().max() < 1e-4


def test_ungrouped_view_splits_each_group_exactly(family, tiny, toks):
    clean, corr = toks
    grouped = edge_scores(tiny, clean, corr, toy_metric, method="EAP")
    flat = edge_scores(tiny, clean, corr, toy_metric, method="EAP", grouped=False)
    g, u = grouped.graph, flat.graph
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            torch.testing.assert_close(
                flat.scores[:, u.q_destination(layer, h)], grouped.scores[:, g.q_destination(layer, h)]
            )
        for slot in range(g.n_kv_heads):
            heads = range(slot * g.group_size, (slot + 1) * g.group_size)
            for kind in ("k", "v"):
                dst_g = getattr(g, f"{kind}_destination")(layer, slot)
                parts = sum(flat.scores[:, getattr(u, f"{kind}_destination")(layer, h)] for h in heads)
                torch.testing.assert_close(parts, grouped.scores[:, dst_g], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(flat.node_scores, grouped.node_scores, atol=1e-5, rtol=1e-4)


def test_every_method_and_the_neuron_level(family, tiny, toks):
    if family != "qwen2":
        pytest.skip("one grouped-query family suffices: the methods share every hook")
    clean, corr = toks
    for method in METHODS:
        s = edge_scores(tiny, clean, corr, toy_metric, method=method, steps=3, level="neuron")
        assert s.scores.abs().sum() > 0 and torch.isfinite(s.scores).all(), method
        torch.testing.assert_close(s.neuron_scores.sum(1), s.node_scores, atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="Unknown method"):
        edge_scores(tiny, clean, corr, toy_metric, method="ACDC")


def test_per_position_edges_sum_to_edges(family, tiny, toks):
    if family != "gpt_bigcode":
        pytest.skip("one multi-query family")
    clean, corr = toks
    s = edge_scores(tiny, clean, corr, toy_metric, method="EAP")
    p = edge_scores(tiny, clean, corr, toy_metric, method="EAP", per_position=True)
    assert p.scores.shape[0] == clean.shape[1]
    torch.testing.assert_close(p.scores.sum(0), s.scores, atol=1e-6, rtol=1e-5)
    assert p.top_n(5, prune=False).n_edges == 5


def test_rowwise_metric_streams_examples_under_a_budget(family, tiny, toks):
    if family != "llama":
        pytest.skip("chunking is architecture-independent")
    clean, corr = toks
    metric = rowwise(lambda logits, ex: logits[:, -1, 5] - logits[:, -1, 7])
    one = edge_scores(tiny, clean, corr, metric, method="EAP")
    streamed = edge_scores(tiny, clean, corr, metric, method="EAP", budget=200_000)
    torch.testing.assert_close(one.scores, streamed.scores, atol=1e-6, rtol=1e-5)
    with pytest.raises(InputError, match="row-wise"):
        edge_scores(tiny, clean, corr, toy_metric, method="EAP", budget=200_000)


def test_circuit_evaluation_patches_each_destination_exactly(family, tiny, toks):
    """One removed edge into an MLP (and into a head's query) equals patching that input by hand; many circuits in
    one batched forward equal one forward each; the full circuit is the clean run, the empty the corrupted."""
    clean, corr = toks
    g = Graph.from_model(tiny)
    layer = g.n_layers - 1
    from codecircuits.circuits.hooks import split_inputs

    _, cache = tiny.run_with_cache(torch.cat([clean, corr]), names_filter="blocks.0.hook_resid_pre")
    x = cache["blocks.0.hook_resid_pre"]
    delta = x[len(clean) :] - x[: len(clean)]
    # the prompts differ before the last position, so remove edges whose destination sees that position
    slot = 1 // g.group_size
    masks = g.valid[None].repeat(4, 1, 1)
    masks[1, 0, g.mlp_destination(0)] = False
    masks[2, 0, g.v_destination(layer, slot)] = False
    masks[3] = False
    batched = circuit_metric(tiny, clean, corr, toy_metric, masks, graph=g)
    alone = torch.cat([circuit_metric(tiny, clean, corr, toy_metric, masks[i : i + 1], graph=g) for i in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    full = toy_metric(tiny(clean)).detach()
    assert (batched[1] - full).abs().max() > 1e-4 and (batched[2] - full).abs().max() > 1e-4
    torch.testing.assert_close(batched[0], full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[3], toy_metric(tiny(corr)).detach(), atol=1e-5, rtol=1e-5)
    if family == "codegen":
        return  # no split inputs to patch by hand (test_destination_inputs_are_the_models_own covers its taps)

    def by_hand(name, head=None):
        def fn(act, hook=None):
            if head is None:
                return act + delta
            act = act.clone()
            act[:, :, head] += delta
            return act

        with split_inputs(tiny):
            return toy_metric(tiny.run_with_hooks(clean, fwd_hooks=[(name, fn)])).detach()

    torch.testing.assert_close(batched[1], by_hand("blocks.0.hook_mlp_in"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[2], by_hand(f"blocks.{layer}.hook_v_input", slot), atol=1e-5, rtol=1e-5)


def test_selection_and_pruning(family, tiny, toks):
    clean, corr = toks
    s = edge_scores(tiny, clean, corr, toy_metric, method="EAP")
    g = s.graph
    raw = s.top_n(10, prune=False)
    assert raw.n_edges == 10
    best = s.top_edges(10)
    assert set(raw.edge_names()) == {n for n, _ in best}
    c = s.top_n(10)
    assert c.n_edges <= 10 and bool((c.edges <= raw.edges).all())
    e = c.edges
    for src in c.nodes.nonzero().flatten().tolist():  # every kept node has an edge out, and one in unless input
        assert e[src].any()
        assert src == 0 or (e.any(0) & g.owners[src]).any()
    greedy = s.greedy(5, prune=False)
    assert greedy.n_edges == 5
    first = max(range(g.n_sources), key=lambda i: abs(float(s.scores[i, g.logits_destination])))
    assert greedy.edges[first, g.logits_destination]
    assert s.threshold(float("inf")).n_edges == 0
    assert s.threshold(0.0, prune=False).n_edges == g.n_edges


def test_mib_areas():
    pct = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
    under, from_1 = areas(pct, [1.0] * 10)
    assert under == pytest.approx(0.999) and from_1 == 0
    under, from_1 = areas(pct, [0.0] * 9 + [1.0])
    assert under == pytest.approx(0.25) and from_1 == pytest.approx(0.999 - 0.25)


def test_faithfulness_curves_beside_random_circuits(family, tiny, toks):
    if family != "llama":
        pytest.skip("one family: the evaluation is checked on all of them above")
    clean, corr = toks
    s = edge_scores(tiny, clean, corr, toy_metric)
    curves = faithfulness_curves(tiny, s, clean, corr, toy_metric, n_random=2)
    for c in curves.values():
        assert c.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
        assert len(c.random) == 2 and all(len(r) == 10 for r in c.random)
        assert c.n_edges[-1] == s.graph.n_edges
        assert c.top(3)["faithfulness"].is_monotonic_decreasing and "<svg" in c.plot().to_svg()
        assert list(c.to_dataframe()["percentage"]) == list(c.percentages)
    assert curves["absolute"].area_from_1 < min(curves["absolute"].random_area_from_1)
    # the areas with intervals over the prompts, and faithfulness as a statistic of per-prompt values
    signed = curves["signed"]
    for from_1, area in ((False, signed.area), (True, signed.area_from_1)):
        iv = signed.area_interval(from_1, n_resamples=50)
        assert iv.estimate == area and iv.n == clean.shape[0]
    values = torch.tensor([signed.full_per_example, signed.empty_per_example, *signed.per_example]).T  # [n, 2 + k]
    torch.testing.assert_close(faithfulness_stat(values[None])[0].double(), torch.tensor(signed.faithfulness,
                               dtype=torch.float64), atol=1e-5, rtol=1e-5, equal_nan=True)


def test_eapig_files_round_trip(family, tiny, toks, tmp_path):
    clean, corr = toks
    s = edge_scores(tiny, clean, corr, toy_metric, method="EAP")
    c = s.top_n(15)
    path = write_eapig(tmp_path / "graph.json", s, c)
    d = json.loads(path.read_text())
    u = s.graph.with_view(grouped=False)
    assert set(d["edges"]) == set(u.edge_names())
    assert all("->" in n for n in d["edges"]) and "input->a0.h0<q>" in d["edges"]
    back, circuit = read_eapig(path)
    torch.testing.assert_close(back.scores, s.scores, atol=1e-6, rtol=1e-5)
    assert torch.equal(circuit.edges, c.edges)
    assert back.graph.grouped == s.graph.grouped or s.graph.group_size == 1


@pytest.mark.parametrize("program", ["hist", "reverse", "sort_unique", "count_other"])
def test_recovers_the_known_circuits_of_tracr_programs(program):
    """Programs compiled with tracr (weights saved by scripts/compile_tracr.py) have their circuit known by
    construction. Edges that carry what any two prompts of one length share (length, position, BOS) are invisible
    to every patching method; against the edges a pair can see, EAP-IG ranks the true ones first."""
    from codecircuits.circuits import edge_auroc
    from codecircuits.tracr_models import load_tracr, tracr_pairs

    model, _, truth = load_tracr(program)
    pairs = tracr_pairs(program, 32, seed=0)
    s = edge_scores(model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.metric, grouped=False)
    assert set(s.graph.edge_names()) == set(truth.all_edges)
    assert edge_auroc(s, truth.effective_edges) >= 0.95
    assert edge_auroc(s, truth.true_edges) > 0.5


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_sparse_and_dense_evaluation_agree(family, tiny, toks, ablation):
    """The per-circuit shortcut (removed edges, or everything upstream minus the kept ones) equals the dense sum
    over every removed edge, which per-position masks take, under each ablation."""
    if family not in ("gpt_neox", "qwen2"):
        pytest.skip("one parallel and one grouped-query family")
    clean, corr = toks
    g = Graph.from_model(tiny)
    gen = torch.Generator().manual_seed(0)
    masks = g.valid[None].repeat(3, 1, 1)
    masks[0, 0, g.mlp_destination(0)] = False  # one edge removed
    masks[1] = False
    masks[1, :3, g.logits_destination] = True  # three edges kept
    masks[2] &= torch.rand(g.valid.shape, generator=gen) < 0.5
    sparse = circuit_metric(tiny, clean, corr, toy_metric, masks, graph=g, ablation=ablation)
    dense = circuit_metric(
        tiny, clean, corr, toy_metric, masks[:, None].expand(-1, clean.shape[1], -1, -1), graph=g, ablation=ablation
    )
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_scores_point_toward_the_clean_behaviour_for_a_metric_and_its_negation(family, tiny, toks):
    """Positive = the edge moves the model toward the clean behaviour, whichever way the metric runs: a metric and
    its negation (a loss) give the same scores, the same signed top-n circuit and the same CPR; forcing the wrong
    direction flips every score; EAP-IG's sign (``direction="lower"``) of the metric is the negation."""
    clean, corr = toks

    def loss(logits):
        return -toy_metric(logits)

    for method in ("EAP", "EAP-IG-inputs") if family == "llama" else ("EAP",):
        m = edge_scores(tiny, clean, corr, toy_metric, method=method, steps=2)
        lo = edge_scores(tiny, clean, corr, loss, method=method, steps=2)
        assert {m.meta["direction"], lo.meta["direction"]} == {"higher", "lower"}
        assert m.meta["metric_clean"] == pytest.approx(-lo.meta["metric_clean"], abs=1e-5)
        torch.testing.assert_close(m.scores, lo.scores, atol=1e-6, rtol=1e-5)
        assert torch.equal(m.top_n(20).edges, lo.top_n(20).edges)
        forced = edge_scores(tiny, clean, corr, toy_metric, method=method, steps=2, direction=lo.meta["direction"])
        torch.testing.assert_close(forced.scores, -m.scores, atol=0, rtol=0)
    # the exact scores are oriented the same way, so EAP approximates them whatever the metric's direction
    for metric in (toy_metric, loss):
        exact = exact_edge_scores(tiny, clean, corr, metric, edges=[m.graph.edge_names()[0]])
        assert exact.meta["direction"] == edge_scores(tiny, clean, corr, metric, method="EAP").meta["direction"]
    with pytest.raises(InputError, match="direction"):
        edge_scores(tiny, clean, clean, toy_metric, method="EAP")  # no difference: the direction is undefined
    with pytest.raises(InputError, match="direction"):
        edge_scores(tiny, clean, corr, toy_metric, method="EAP", direction="up")
    if family == "llama":
        a = faithfulness_curves(tiny, m, clean, corr, toy_metric, percentages=(0, 10, 50, 100), n_random=1)
        b = faithfulness_curves(tiny, lo, clean, corr, loss, percentages=(0, 10, 50, 100), n_random=1)
        assert a["signed"].area == pytest.approx(b["signed"].area, abs=1e-5)
        assert a["absolute"].area_from_1 == pytest.approx(b["absolute"].area_from_1, abs=1e-5)


def test_edge_scores_table_top_and_plot(family, tiny, toks):
    if family != "qwen2":
        pytest.skip("one family (grouped-query) is enough for the table")
    clean, corr = toks
    s = edge_scores(tiny, clean, corr, toy_metric, method="EAP")
    df = s.to_dataframe()
    assert len(df) == s.graph.n_edges and set(df.columns) == {"edge", "source", "destination", "score"}
    top = s.top(5)
    assert len(top) == 5 and list(top["score"].abs()) == sorted(df["score"].abs(), reverse=True)[:5]
    assert s.top(3, absolute=False)["score"].tolist() == sorted(df["score"], reverse=True)[:3]
    assert 'data-bars="7"' in s.plot(7).svg
