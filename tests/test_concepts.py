"""Concept catalogue, token masks, key scores, masking edits: every architecture of the matrix."""

from __future__ import annotations

import pytest
import torch

from codecircuits import InputError
from codecircuits import memories as mem
from codecircuits.memories import concepts as cc

TEXTS = [
    "import os\n\n\ndef read(path):\n    # read it all\n    with open(path) as f:\n        return f.read()\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
    "for i in range(10):\n    total = total + i * 2\n    print('i is', i)\n",
    "import re\nPATTERN = re.compile(r'\\d+')\nitems = [int(m) for m in PATTERN.findall(s)]\n",
]


def _token_spans(chunked, d):
    text = chunked.texts[d]
    return [text[a:b] for a, b in chunked.offsets[d]]


def test_catalogue_has_both_kinds_and_checks_input():
    names = [c.name for c in cc.CATALOGUE]
    assert len(set(names)) == len(names)
    sem = {c.name for c in cc.catalogue("semantic")}
    assert {"api_os", "api_re", "api_json", "api_typing", "api_collections", "exceptions", "file_io"} <= sem
    assert {"arithmetic", "loops"} <= sem
    shallow = {c.name for c in cc.catalogue("shallow")}
    assert {"indentation", "string", "comment", "kw_def", "comma"} <= shallow
    with pytest.raises(InputError, match="kind"):
        cc.Concept("x", "deep", "a")
    with pytest.raises(InputError, match="regular expression"):
        cc.Concept("x", "shallow", "(")
    with pytest.raises(InputError, match="No concept"):
        cc.get("numpy")


def test_token_masks_follow_regex_and_scope(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=64)
    concepts = [cc.get("comment"), cc.get("exceptions"), cc.get("indentation"), cc.get("api_os")]
    masks = cc.token_masks(ch, concepts)
    tok_masks = cc.token_masks(ch, concepts, force_token=True)
    starts, _ = ch.flat_index()
    for d in range(len(TEXTS)):
        text, off = ch.texts[d], ch.offsets[d]
        m = masks.mask[:, starts[d] : starts[d] + len(off)]
        t = tok_masks.mask[:, starts[d] : starts[d] + len(off)]
        for i, (a, b) in enumerate(off):
            line_start = text.rfind("\n", 0, a) + 1
            line_end = text.find("\n", a)
            line = text[line_start : line_end if line_end >= 0 else len(text)]
            end = line_start + len(line)
            h = text.find("#", line_start, end)
            in_comment = h >= 0 and a < end and b > h  # the token overlaps '#...' up to the line's end
            assert bool(m[0, i]) == in_comment  # token scope: inside the comment
            assert bool(m[1, i]) <= (("except" in line) or ("try" in line) or ("Error" in line))
            assert bool(t[1, i]) <= bool(m[1, i])  # token scope is narrower than line scope
            assert bool(m[3, i]) <= ("os" in line)
        # the line scope reaches tokens after the keyword on its line: the ':' of 'except ValueError:'
        if "except" in text:
            colon = [i for i, s in enumerate(_token_spans(ch, d)) if s.endswith(":") and "except" in text[: off[i][1]]]
            assert colon and m[1, colon[-1]] and not t[1, colon[-1]]


def test_key_scores_match_examples(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=32, max_chunks=8)
    scan = mem.scan(tiny, ch, k=4, batch_size=8, progress=False)
    concepts = [cc.get("indentation"), cc.get("loops"), cc.get("string")]
    sc = cc.key_scores(scan, ch, concepts)
    assert sc.scores.shape == (3, tiny.cfg.n_layers, tiny.cfg.d_mlp)
    masks = cc.token_masks(ch, concepts)
    starts, _ = ch.flat_index()
    for layer, n in [(0, 0), (tiny.cfg.n_layers - 1, 5)]:
        ex = scan.examples(layer, n, ch)
        for ci in range(3):
            hits = [bool(masks.mask[ci, starts[ch.chunk_doc[e.chunk]] + e.pos]) for e in ex]
            assert float(sc.scores[ci, sc.layers.index(layer), n]) == pytest.approx(sum(hits) / len(ex))
    assert (sc.base_rate > 0).all() and (sc.base_rate < 1).all()
    dist = sc.layer_distribution(tau=0.5, min_lift=1.0)
    assert (dist["shallow"] + dist["semantic"] + dist["unlabelled"] == tiny.cfg.d_mlp).all()
    labels = sc.labels(tau=0.5, min_lift=1.0)
    sel = sc.keys("indentation", tau=0.5, min_lift=1.0, max_keys=5)
    assert sum(len(v) for v in sel.values()) <= 5
    for layer, ns in sel.items():
        assert (sc.scores[0, sc.layers.index(layer), ns] >= 0.5).all()
    assert labels.shape == (tiny.cfg.n_layers, tiny.cfg.d_mlp)
    assert set(sc.to_dataframe()["concept"]) == {c.name for c in concepts}
    assert len(sc.top(3)) == 3 and sc.top(3)["score"].is_monotonic_decreasing and "<svg" in sc.plot().to_svg()


def test_masking_zero_keys_changes_nothing(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=32, max_chunks=4)
    base = cc.evaluate(tiny, ch)
    empty = {layer: [] for layer in range(tiny.cfg.n_layers)}
    hooks = cc.mask_hooks(tiny, empty)
    assert len(hooks) == tiny.cfg.n_layers  # the hooks run, they just zero nothing
    same = cc.evaluate(tiny, ch, hooks=hooks)
    assert torch.equal(same.loss, base.loss) and torch.equal(same.correct, base.correct)
    toks, _ = ch.batch(range(len(ch)), 0)
    assert torch.equal(tiny.run_with_hooks(toks, fwd_hooks=hooks), tiny(toks))


def test_masking_removes_exactly_the_value_vectors(tiny):
    toks = tiny.to_tokens(TEXTS[0])
    layer, keys = tiny.cfg.n_layers - 1, [1, 4, 9]
    name_post, name_out = f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
    _, clean = tiny.run_with_cache(toks, names_filter=[name_post, name_out])
    with tiny.hooks(fwd_hooks=cc.mask_hooks(tiny, {layer: keys})):
        _, masked = tiny.run_with_cache(toks, names_filter=[name_post, name_out])
    assert (masked[name_post][..., keys] == 0).all()
    removed = clean[name_post][..., keys] @ tiny.W_out[layer][keys]
    torch.testing.assert_close(clean[name_out] - masked[name_out], removed, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="Neurons"):
        cc.mask_hooks(tiny, {0: [tiny.cfg.d_mlp]})
    with pytest.raises(InputError, match="Layer"):
        cc.mask_hooks(tiny, {99: [0]})


def test_random_keys_control(tiny):
    keys = {0: [1, 2, 3], tiny.cfg.n_layers - 1: [7]}
    r = cc.random_keys(tiny, keys, seed=3)
    assert {k: len(v) for k, v in r.items()} == {k: len(v) for k, v in keys.items()}
    assert all(not set(r[k]) & set(keys[k]) for k in keys)
    assert r == cc.random_keys(tiny, keys, seed=3) and r != cc.random_keys(tiny, keys, seed=4)


def test_random_keys_matched_on_activation_magnitude(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=32, max_chunks=6)
    stats = mem.scan(tiny, ch, k=3, batch_size=8, progress=False).activation_stats()
    last = tiny.cfg.n_layers - 1
    li = stats.layers.index(last)
    loud = stats.rms[li].argsort(descending=True)[:4].tolist()  # the layer's four loudest keys
    keys = {last: loud}
    plain = [cc.random_keys(tiny, keys, seed=s)[last] for s in range(5)]
    matched = [cc.random_keys(tiny, keys, seed=s, match=stats, neighbours=3)[last] for s in range(5)]
    rms = stats.rms[li]
    sel = float(rms[loud].mean())
    gap_plain = sum(abs(float(rms[r].mean()) - sel) for r in plain) / 5
    gap_matched = sum(abs(float(rms[r].mean()) - sel) for r in matched) / 5
    assert gap_matched < 0.5 * gap_plain
    assert all(len(r) == 4 and not set(r) & set(loud) for r in matched)
    assert len({tuple(r) for r in matched}) > 1  # still random among the neighbours
    with pytest.raises(InputError, match="no activation statistics"):
        cc.random_keys(tiny, {99: [0]}, match=stats)


def test_edit_concept_table(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=32, max_chunks=6)
    scan = mem.scan(tiny, ch, k=3, batch_size=8, progress=False)
    sc = cc.key_scores(scan, ch, [cc.get("indentation"), cc.get("loops")])
    eval_texts = TEXTS[2:]
    none = cc.edit_concept(tiny, sc, "loops", eval_texts, keys={}, window=32)
    rows = none.to_dataframe().set_index("condition")
    assert rows.loc["concept keys masked", "concept_loss"] == rows.loc["baseline", "concept_loss"]
    assert rows.loc["concept keys masked", "general_accuracy"] == rows.loc["baseline", "general_accuracy"]
    sel = sc.keys("indentation", tau=0.0, min_lift=0.0, max_keys=6)
    e = cc.edit_concept(tiny, sc, "indentation", eval_texts, keys=sel, window=32, n_controls=2)
    assert e.n_keys == 6 and len(e.controls) == 2
    df = e.to_dataframe()
    assert list(df["condition"]) == ["baseline", "concept keys masked", "random keys masked"]
    assert df["concept_tokens"].iloc[0] > 0 and df["general_tokens"].iloc[0] > 0
    assert df["concept_loss"].iloc[1] != df["concept_loss"].iloc[0]  # masking six keys does something
    assert df["concept_drop"].iloc[0] == 0 and e.top()["concept_drop"].is_monotonic_decreasing
    assert "<svg" in e.plot().to_svg()
    iv = e.intervals
    assert set(iv) >= {"concept_drop", "control_concept_drop", "excess_concept_drop", "general_drop"}
    assert iv["concept_drop"].estimate == pytest.approx(e.drops()["concept_drop"])
    assert iv["concept_drop"].low <= iv["concept_drop"].estimate <= iv["concept_drop"].high
    assert len(e.control_draws) == 2
    assert none.intervals["concept_drop"].estimate == 0 and none.intervals["concept_drop"].high == 0
    # "trigger" positions are the predictions made at concept tokens: each is the target one token later
    base = cc.evaluate(tiny, mem.chunk_corpus(tiny, eval_texts, window=32), batch_size=8)
    cm = cc.token_masks(mem.chunk_corpus(tiny, eval_texts, window=32), [cc.get("indentation")], force_token=True)
    at_trigger = cc.concept_positions(base, cm.mask[0], "trigger")
    assert torch.equal(base.target[at_trigger] - 1, base.source[at_trigger])
    assert bool(cm.mask[0][base.source[at_trigger]].all()) and at_trigger.any()
    assert not torch.equal(at_trigger, cc.concept_positions(base, cm.mask[0], "target"))
    et = cc.edit_concept(tiny, sc, "indentation", eval_texts, keys=sel, window=32, at="trigger", baseline=base)
    assert et.rows[0]["concept_tokens"] == int(at_trigger.sum())
    with pytest.raises(InputError, match="at must be"):
        cc.concept_positions(base, cm.mask[0], "next")
    table = cc.edit_table([none, e])
    assert list(table["concept"]) == ["loops", "indentation"] and set(e.drops()) >= {"concept_drop", "general_drop"}


@pytest.mark.slow
def test_default_model_import_keys_edit(default_model):
    """RQ2 on smollm2-135m: masking the keys whose triggers are import statements hurts import tokens far more
    than masking as many random keys per layer, and more than it hurts the other tokens."""
    ch = mem.chunk_corpus(default_model, "stdlib:test", window=64, max_tokens=1024)
    scan = mem.scan(default_model, ch, k=10, progress=False)
    sc = cc.key_scores(scan, ch, [cc.get("kw_import"), cc.get("comment")])
    keys = sc.keys("kw_import", tau=0.5, min_lift=2.0, max_keys=200)
    assert sum(len(v) for v in keys.values()) >= 50
    e = cc.edit_concept(default_model, sc, "kw_import", "stdlib:validation", keys=keys, window=64, max_tokens=320)
    d = e.drops()
    rows = e.to_dataframe().set_index("condition")
    general_rise = rows.loc["concept keys masked", "general_loss"] - rows.loc["baseline", "general_loss"]
    assert rows.loc["baseline", "concept_tokens"] >= 30
    assert d["concept_loss_rise"] > 0.3 and d["concept_loss_rise"] > 3 * max(d["control_concept_loss_rise"], 0.05)
    assert d["concept_loss_rise"] > 2 * general_rise


def test_code_concepts_skip_strings_and_comments():
    import numpy as np

    text = 'x = "a # b"  # it\'s for you\ny = a - b  # XML-RPC\nfor i in x: pass\n'
    offsets = np.array([[i, i + 1] for i in range(len(text))])
    names = ["comment", "string", "arithmetic", "loops"]
    m = cc.doc_masks(text, offsets, [cc.get(n) for n in names], force_token=True)
    marked = {n: "".join(text[i] for i in np.nonzero(row)[0]) for n, row in zip(names, m)}
    assert marked["comment"] == "# it's for you# XML-RPC"  # the '#' inside the string starts no comment
    assert marked["string"] == '"a # b"'  # the quote in "it's" starts no string
    assert marked["arithmetic"] == " - "  # XML-RPC in a comment is no subtraction
    assert marked["loops"] == "for"  # only the code 'for', not the one in the comment
