"""Paren-promoting heads (precision/recall/F1) and counting heads, on hand-made numbers and on every family."""

from __future__ import annotations

import pytest
import torch

from codecircuits import heads, lens
from codecircuits.errors import InputError
from codecircuits.tasks import parens


def _hl(values):
    return lens.HeadLogits(values, (11, 12, 13), (")", "))", ")))"), True, -1)


def test_promoter_precision_recall_f1_by_hand():
    labels = torch.tensor([0, 0, 1, 2])
    v = torch.zeros(4, 1, 3, 3)
    v[torch.arange(4), 0, 0, labels] = 5.0  # head 0: always the right token
    v[:, 0, 1, 0] = 2.0  # head 1: always token 0
    v[:, 0, 2, :] = -1.0  # head 2: never promotes anything (all logits negative)
    v[3, 0, 1, 2] = 1.7  # head 1 on prompt 3: token 2 within 0.8 x max -> promotes 0 and 2
    pr = heads.paren_promoters(_hl(v), labels, classes=(1, 2, 3))
    assert pr.f1[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    # head 1 promotes class 1 on all 4 prompts, 2 of which are class 1
    assert pr.precision[0, 0, 1].item() == pytest.approx(0.5) and pr.recall[0, 0, 1].item() == 1.0
    assert pr.f1[0, 0, 1].item() == pytest.approx(2 * 0.5 / 1.5)
    assert pr.precision[2, 0, 1].item() == 1.0 and pr.recall[2, 0, 1].item() == 1.0
    assert pr.recall[1, 0, 1].item() == 0.0 and pr.f1[1, 0, 1].item() == 0.0
    assert pr.f1[:, 0, 2].abs().sum() == 0
    assert pr.support == (2, 1, 1)
    assert pr.heads(2, 1) == [(0, 0)]
    assert pr.heads(1, 2, by="logit")[0] == (0, 0)
    assert pr.top(1, 1).iloc[0]["head"] == "L0H0"
    # stricter ratio: head 1 no longer promotes token 2 on prompt 3
    strict = heads.paren_promoters(_hl(v), labels, classes=(1, 2, 3), ratio=0.9)
    assert strict.recall[2, 0, 1].item() == 0.0


def test_promoter_errors():
    v = torch.zeros(2, 1, 1, 3)
    with pytest.raises(InputError, match="labels"):
        heads.paren_promoters(_hl(v), [0])
    with pytest.raises(InputError, match="Label indices"):
        heads.paren_promoters(_hl(v), [0, 3])
    with pytest.raises(InputError, match="ratio"):
        heads.paren_promoters(_hl(v), [0, 1], ratio=0)


class _FakeModel:
    """Just what counting_heads reads: cfg, W_O and a tokenizer that names tokens."""

    class cfg:  # noqa: N801
        n_layers, n_heads = 1, 2

    W_O = torch.zeros(1, 2, 1, 1)

    class tokenizer:  # noqa: N801
        @staticmethod
        def convert_ids_to_tokens(ids):
            return ["(" if i == 1 else "x" for i in ids]


def test_counting_head_found_by_hand():
    # head 0 attends to the "(" tokens in proportion to their count; head 1 always to the first token
    groups, caches = [], []
    for n in (1, 2, 3):
        toks = torch.tensor([[0] + [1] * n + [2] * (4 - n)] * 2)
        pat = torch.zeros(2, 2, 5, 5)
        pat[:, 0, -1, 1 : 1 + n] = 0.2
        pat[:, 0, -1, 0] = 1 - 0.2 * n
        pat[:, 1, -1, 0] = 1.0
        groups.append((toks, n + 0))
        caches.append({"blocks.0.attn.hook_pattern": pat, "blocks.0.hook_resid_pre": torch.zeros(2, 5, 1)})
    ch = heads.counting_heads(_FakeModel, groups, caches=caches)
    assert ch.attn_corr[0, 0].item() == pytest.approx(1.0)
    assert torch.isnan(ch.attn_corr[0, 1])  # constant: no correlation
    torch.testing.assert_close(ch.attn_mass[:, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    torch.testing.assert_close(ch.per_paren[:, 0, 0], torch.tensor([0.2, 0.2, 0.2]))
    assert ch.heads(1) == [(0, 0)]
    assert ch.output_corr is None
    with pytest.raises(InputError):
        ch.heads(1, by="output_corr")
    with pytest.raises(InputError, match="two different"):
        heads.counting_heads(_FakeModel, groups[:1], caches=caches[:1])


def test_heads_on_every_family(tiny):
    ds = parens.dataset(tiny, n_numbers=4, split=None)
    groups = {k: t for k, (_, t) in ds.groups(tiny).items()}
    ids = [ds.label_ids[k] for k in ds.n_opens]
    caches, hls = [], []
    for k in ds.n_opens:
        _, cache = lens.run_cache(tiny, groups[k], extra=("attn.hook_pattern",))
        caches.append(cache)
        hls.append(lens.head_logits(tiny, groups[k], ids, cache=cache))
    labels = torch.cat([torch.full((groups[k].shape[0],), i) for i, k in enumerate(ds.n_opens)])
    merged = lens.HeadLogits(torch.cat([h.values for h in hls]), tuple(ids), hls[0].token_labels, True, -1)
    pr = heads.paren_promoters(merged, labels, classes=ds.n_opens)
    assert pr.f1.shape == (4, tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert ((pr.f1 >= 0) & (pr.f1 <= 1)).all()
    ch = heads.counting_heads(
        tiny,
        [(groups[k], k) for k in ds.n_opens],
        caches=caches,
        head_logits=hls,
        correct_index=list(range(4)),
    )
    assert ch.attn_mass.shape == (4, tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert ((ch.attn_mass >= -1e-6) & (ch.attn_mass <= 1 + 1e-6)).all()
    assert ch.promotes_correct.shape == (4, tiny.cfg.n_layers, tiny.cfg.n_heads)
    # the same numbers when counting_heads runs the model itself
    again = heads.counting_heads(tiny, [(groups[k], k) for k in ds.n_opens])
    torch.testing.assert_close(again.attn_corr, ch.attn_corr, equal_nan=True)
    assert len(ch.top(3)) == 3


def test_find_paren_heads_is_promoters_and_counting_heads_of_one_forward(tiny):
    ds = parens.dataset(tiny, n_numbers=4, split=None)
    groups = [(t, k) for k, (_, t) in ds.groups(tiny).items()]
    ids = [ds.label_ids[k] for _, k in groups]
    found = heads.find_paren_heads(tiny, groups, ids, ratio=0.7)
    hls = [lens.head_logits(tiny, t, ids) for t, _ in groups]
    pr, merged, labels = heads.promoters_of(hls, [k for _, k in groups], ratio=0.7)
    torch.testing.assert_close(found.promoters.f1, pr.f1)
    torch.testing.assert_close(found.head_logits.values, merged.values)
    assert torch.equal(found.labels, labels) and found.promoters.classes == tuple(k for _, k in groups)
    ch = heads.counting_heads(tiny, groups, head_logits=hls, correct_index=list(range(len(groups))))
    torch.testing.assert_close(found.counting.attn_corr, ch.attn_corr, equal_nan=True)
    assert len(found.logits) == len(found.caches) == len(groups)
    with pytest.raises(InputError, match="one token per group"):
        heads.find_paren_heads(tiny, groups, ids[:1])


def test_random_heads_draw_as_each_study_did():
    class model:  # noqa: N801
        class cfg:  # noqa: N801
            n_layers, n_heads = 3, 4

    import random

    pool = [(a, b) for a in range(3) for b in range(4) if (a, b) not in {(0, 1), (2, 3)}]
    draws = heads.random_heads(model, 3, exclude=[(0, 1), (2, 3)], n_draws=2, seed=7)
    gen = torch.Generator().manual_seed(7)
    assert draws == [[pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:3]] for _ in range(2)]
    (one,) = heads.random_heads(model, 3, exclude={(0, 1), (2, 3)}, seed=7, rng="python")
    assert one == sorted(random.Random(7).sample(pool, 3))
    assert len(heads.random_heads(model, 50)[0]) == 12  # never more than the pool
    with pytest.raises(InputError, match="rng"):
        heads.random_heads(model, 1, rng="numpy")


class _ParenModel:
    """Token 1 is '(', 3 is ')', 4 is '))', others are words: what count_tracking reads (1 layer, 2 heads)."""

    class cfg:  # noqa: N801
        n_layers, n_heads = 1, 2

    class tokenizer:  # noqa: N801
        @staticmethod
        def convert_ids_to_tokens(ids):
            return [{1: "(", 3: ")", 4: "))"}.get(i, "x") for i in ids]


def test_open_paren_counts_match_each_close_to_the_latest_open():
    toks = torch.tensor([[0, 1, 1, 2, 3, 1, 2]])  # ( ( x ) ( x : the second '(' is closed
    all_, open_ = heads.open_paren_counts(_ParenModel, toks)
    assert all_[0].tolist() == [0, 1, 1, 0, 0, 1, 0]
    assert open_[0].tolist() == [0, 1, 0, 0, 0, 1, 0]


def test_partial_correlation_removes_what_the_covariates_explain():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 2, generator=g)
    x = torch.randn(200, generator=g)
    y_count = 2 * x + 3 * z[:, 0] + 0.1 * torch.randn(200, generator=g)  # follows x beyond z
    y_dilute = 3 * z[:, 0] - z[:, 1] + 0.1 * torch.randn(200, generator=g)  # explained by z alone
    pc = heads.partial_correlation(x, torch.stack([y_count, y_dilute], 1), z)
    assert pc[0] > 0.95 and abs(pc[1]) < 0.2
    # x a function of the covariates: nothing is left to explain
    assert torch.isnan(heads.partial_correlation(z[:, 0] * 2, y_count[:, None], z))[0]


def test_count_tracking_tells_counting_from_dilution():
    # prompts like the closed template, "f(f(x))+f(x": c closed calls, then o open ones (each call two tokens);
    # head 0 attends 0.15 to each *open* paren, head 1 spreads attention evenly over all tokens (its paren mass
    # grows only with the number of paren tokens)
    groups, caches = [], []
    for c in range(3):
        for o in range(1, 4):
            toks = torch.tensor([[0] + [2, 1] * c + ([2 + c] if c else []) + [5] + [2, 1] * o + [2]] * 2)
            n = toks.shape[1]
            pat = torch.zeros(2, 2, n, n)
            _, open_ = heads.open_paren_counts(_ParenModel, toks[:1])
            pat[:, 0, -1] = 0.15 * (open_[0] > 0).float()
            pat[:, 0, -1, 0] += 1 - pat[0, 0, -1].sum()
            pat[:, 1, -1] = 1.0 / n
            groups.append((toks, o))
            caches.append({"blocks.0.attn.hook_pattern": pat})
    tr = heads.count_tracking(_ParenModel, groups, caches=caches)
    assert tr.partial_corr[0, 0] > 0.99  # counts the open parens
    assert abs(tr.partial_corr[0, 1]) < 0.5 < tr.raw_corr[0, 1]  # dilution passes the raw measure, not this one
    assert tr.heads(1) == [(0, 0)]
    assert len(tr.top(2)) == 2 and tr.top().iloc[0]["head"] == "L0H0" and "<svg" in tr.plot().to_svg()
    with pytest.raises(InputError, match="two different"):
        heads.count_tracking(_ParenModel, groups[:1], caches=caches[:1])


def test_general_promoters_order_by_counts_then_macro_f1():
    f1 = torch.zeros(3, 1, 3)
    f1[:, 0, 0] = torch.tensor([0.9, 0.6, 0.0])  # promotes 2 counts
    f1[:, 0, 1] = torch.tensor([0.6, 0.6, 0.6])  # promotes 3 counts
    f1[:, 0, 2] = torch.tensor([1.0, 0.0, 0.0])  # promotes 1 count
    pr = heads.PromoterHeads(f1, f1, f1, f1, (1, 1, 1), (1, 2, 3), 0.8)
    assert pr.general(min_f1=0.5, min_counts=2) == [(0, 1), (0, 0)]
    assert pr.general(min_f1=0.5, min_counts=1)[-1] == (0, 2)
