"""codecircuits.cna and the hooks of codecircuits.neurons on the intervention core give the numbers of the engines
they replaced (the frozen copies in tests/_reference), on every architecture of the test matrix.

The head sweep now runs on ablation.head_sweep: the ablated rows are stacked differently along the batch and the
clean forward goes through the core's receiver (with a key/value cache), so its log-probabilities agree to float32
round-off (1e-5), not bit for bit; the top-1 comparisons must agree exactly. CNA and the mask/keep table use the
same kernels as before with the hooks rebuilt as core interventions, so they must agree exactly.
"""

from __future__ import annotations

import pytest
import torch
from _reference import cna as ref_cna
from _reference import neurons as ref_neurons

from codecircuits import ablation, cna, neurons
from codecircuits.errors import InputError

# two token lengths under the tiny tokenizer (9, 10, 9, 10 tokens with a BOS), interleaved so the batches by length
# must be put back in the prompts' order
PROMPTS = ["print(str(str(12", "x = [i * 2 for i", "print(len(str(45", "assert 3 + 4 =="]


def _check_sweep(new: cna.HeadSweep, old) -> None:
    torch.testing.assert_close(new.prompt_logprob, old.prompt_logprob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new.logprob, old.logprob, atol=1e-5, rtol=1e-5)
    assert torch.equal(new.correct, old.correct)
    assert torch.equal(new.accuracy, old.accuracy)
    assert torch.equal(new.base_correct, old.base_correct)
    assert torch.equal(new.labels, old.labels)
    assert new.base_accuracy == old.base_accuracy
    assert abs(new.base_logprob - old.base_logprob) < 1e-5


def test_prompts_have_two_lengths(tiny):
    n = [tiny.to_tokens(p).shape[1] for p in PROMPTS]
    assert n[0] == n[2] and n[1] == n[3] == n[0] + 1


def test_head_sweep_equals_the_reference_with_top1_labels(tiny):
    new = cna.head_sweep(tiny, PROMPTS, progress=False)
    old = ref_cna.head_sweep(tiny, PROMPTS, progress=False)
    _check_sweep(new, old)
    assert new.base_accuracy == 1.0
    assert new.to_dataframe()["name"].tolist()[:2] == ["L0H0", "L0H1"]


def test_head_sweep_equals_the_reference_on_a_head_subset_with_labels_and_chunks(tiny):
    with torch.no_grad():
        labels = torch.tensor([int(tiny(tiny.to_tokens(p))[0, -2].argsort()[-2]) for p in PROMPTS])
    last = tiny.cfg.n_layers - 1
    heads = [(0, 1), (0, 3), (last, 0), (last, 2), (last, 3)]  # different heads in different layers
    kw = dict(pos=-2, heads=heads, max_rows=3, batch_size=1, progress=False)
    new = cna.head_sweep(tiny, PROMPTS, labels, **kw)
    old = ref_cna.head_sweep(tiny, PROMPTS, labels, **kw)
    _check_sweep(new, old)
    # a head outside the subset keeps the base values; a swept one differs from them somewhere
    assert torch.equal(new.prompt_logprob[0, 0], torch.tensor([float(x) for x in old.prompt_logprob[0, 0]]))
    assert not torch.equal(new.prompt_logprob[last, 0], new.prompt_logprob[0, 0])


def test_head_sweep_with_a_memory_budget_equals_max_rows(tiny):
    a = cna.head_sweep(tiny, PROMPTS, progress=False, max_rows=2)
    b = cna.head_sweep(tiny, PROMPTS, progress=False, memory_budget="1GB")
    torch.testing.assert_close(a.prompt_logprob, b.prompt_logprob, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.correct, b.correct)
    with pytest.raises(InputError, match="not both"):
        cna.head_sweep(tiny, PROMPTS, progress=False, max_rows=2, memory_budget="1GB")
    with pytest.raises(InputError, match="outside"):
        cna.head_sweep(tiny, PROMPTS, pos=20, progress=False)


def test_head_sweep_of_no_heads_is_the_base(tiny):
    new = cna.head_sweep(tiny, PROMPTS, heads=[], progress=False)
    old = ref_cna.head_sweep(tiny, PROMPTS, heads=[], progress=False)
    _check_sweep(new, old)


@pytest.mark.parametrize("layers", [None, "last"])
def test_compare_and_mask_keep_equal_the_reference(tiny, layers):
    layers = None if layers is None else [tiny.cfg.n_layers - 1]
    head = (0, 1)
    new = cna.compare(tiny, PROMPTS, head, layers=layers, batch_size=2, progress=False)
    old = ref_cna.compare(tiny, PROMPTS, head, layers=layers, batch_size=2, progress=False)
    for name in (
        "cna",
        "imp_original",
        "imp_ablated",
        "coef_original",
        "coef_ablated",
        "prob_original",
        "prob_ablated",
    ):
        assert torch.equal(getattr(new, name).nan_to_num(-7.0), getattr(old, name).nan_to_num(-7.0)), name
    assert torch.equal(new.target, old.target)
    assert new.target_tokens == old.target_tokens and new.settings == old.settings
    ns = (2, 5, tiny.cfg.d_mlp)
    mk_new = cna.mask_keep(tiny, PROMPTS, new, ns=ns, only_correct=False, progress=False)
    mk_old = ref_cna.mask_keep(tiny, PROMPTS, old, ns=ns, only_correct=False, progress=False)
    assert mk_new.table.equals(mk_old.table)
    assert (mk_new.n_prompts, mk_new.base_accuracy) == (mk_old.n_prompts, mk_old.base_accuracy)


def test_hooks_equal_the_reference_hooks(tiny):
    toks = tiny.to_tokens(PROMPTS[0])
    heads = [(0, 1), (tiny.cfg.n_layers - 1, 0), (tiny.cfg.n_layers - 1, 3)]
    with torch.no_grad():
        with tiny.hooks(fwd_hooks=ablation.ablation_hooks(tiny, heads)):
            a = tiny(toks)
        with tiny.hooks(fwd_hooks=ref_neurons.head_zero_hooks(tiny, heads)):
            b = tiny(toks)
        assert torch.equal(a, b)
        g = torch.Generator().manual_seed(0)
        mask = (torch.rand(1, tiny.cfg.n_layers, tiny.cfg.d_mlp, generator=g) > 0.3).float()
        with tiny.hooks(fwd_hooks=neurons.neuron_mask_hooks(tiny, mask)):
            a = tiny(toks)
        with tiny.hooks(fwd_hooks=ref_neurons.neuron_mask_hooks(tiny, mask)):
            b = tiny(toks)
        assert torch.equal(a, b)
        with tiny.hooks(fwd_hooks=neurons.neuron_mask_hooks(tiny, mask.bool())):  # a bool mask: True keeps
            assert torch.equal(tiny(toks), b)
    with pytest.raises(InputError, match="other than 0 and 1"):
        neurons.neuron_mask_hooks(tiny, mask * 0.5)
    with pytest.raises(InputError, match=r"\[batch, layer, d_mlp\]"):
        neurons.neuron_mask_hooks(tiny, mask[:, :1])
