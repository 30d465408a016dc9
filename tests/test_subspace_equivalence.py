"""The subspace package (patches installed as ``core.interventions.SubspaceSwap`` hooks) gives the numbers of the
engine before it moved onto the core (``tests/_reference/subspace.py``, which ran TransformerLens's
``SubspaceInterchange`` through ``run_with_intervention``) on every family of the test matrix.

The swap is the same expression on the same selected ``[pair, d]`` vectors, but the patched runs (and DAS's base
runs) now start at the hook's layer from the cached residual there (``core.runner.run_from``) and unembed only the
positions read, so the numbers agree to float rounding rather than bit for bit: logit differences to 1e-4,
directions to 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from _reference import subspace as ref_sub

from codecircuits import subspace as sub

BASE = ["print(str(123", "print(str(45", "print(str(str(7", "x = (1 + 2", "print(str(str(88", "print(str(6"]
SOURCE = ["print(str(str(123", "print(str(str(4", "print(str(8", "x = ((1 + 2", "print(str(31", "print(str(str(60"]
BV = [0, 0, 1, 0, 1, 0]
SV = [1, 1, 0, 1, 0, 1]
ANSWERS = ["))", ")))"]
HOOKS = ("blocks.1.mlp.hook_post", "blocks.0.hook_resid_post")


def _pairs(model, module):
    return module.PatchPairs.from_prompts(model, BASE, SOURCE, BV, SV, ANSWERS, groups=list("aabbcc"))


def _same_result(new, old):
    assert new.name == old.name and new.hook_name == old.hook_name
    assert new.dimension == old.dimension and new.strength == old.strength
    assert torch.allclose(new.ld_clean, old.ld_clean, atol=1e-4, rtol=1e-4)
    assert torch.allclose(new.ld_patched, old.ld_patched, atol=1e-4, rtol=1e-4)
    assert new.fldd == pytest.approx(old.fldd, abs=1e-2 * max(1.0, abs(old.fldd)))
    # an answer can flip only where the two answer logits tie to rounding
    close = (old.ld_patched.abs() < 1e-3).sum()
    assert abs(new.interchange_accuracy - old.interchange_accuracy) * new.n_pairs <= close


def test_pairs_are_built_the_same(tiny):
    new, old = _pairs(tiny, sub), _pairs(tiny, ref_sub)
    for f in ("base_tokens", "source_tokens", "base_positions", "source_positions", "answer_ids"):
        assert torch.equal(getattr(new, f), getattr(old, f)), f
    assert len({len(p) for p in BASE}) > 1  # prompts of different lengths: padding and per-pair positions matter


@pytest.mark.parametrize("hook", HOOKS)
def test_patch_equals_reference(tiny, hook):
    pairs, ref_pairs = _pairs(tiny, sub), _pairs(tiny, ref_sub)
    acts = sub.activations(tiny, hook, pairs.source_tokens, pairs.source_positions)
    assert torch.equal(acts, ref_sub.activations(tiny, hook, pairs.source_tokens, pairs.source_positions))
    d = acts.shape[1]
    g = torch.Generator().manual_seed(7)
    plane = torch.linalg.qr(torch.randn(d, 2, generator=g))[0]  # a 2-D subspace
    vector = torch.randn(d, generator=g)
    cases = [
        dict(direction=None),
        dict(direction=vector),
        dict(direction=vector, strength=3.0),
        dict(direction=plane, strength=0.5),
        dict(direction=torch.zeros(d, 0)),
        dict(direction=sub.random_direction(tiny, hook, seed=2)),
    ]
    moved = 0
    for case in cases:
        kw = dict(case)
        direction = kw.pop("direction")
        ref_direction = (
            ref_sub.random_direction(tiny, hook, seed=2) if isinstance(direction, sub.Direction) else direction
        )
        new = sub.patch(tiny, pairs, hook, direction, batch_size=4, **kw)
        old = ref_sub.patch(tiny, ref_pairs, hook, ref_direction, batch_size=4, **kw)
        _same_result(new, old)
        moved += not torch.allclose(new.ld_patched, new.ld_clean, atol=1e-3)
    assert moved >= 4  # the cases that patch something did change the answer (the comparison is not vacuous)


@pytest.mark.parametrize("hook", HOOKS)
def test_directions_equal_reference(tiny, hook):
    pairs, ref_pairs = _pairs(tiny, sub), _pairs(tiny, ref_sub)
    kw = dict(epochs=2, batch_size=4, lr=0.05, seed=3, progress=False)  # batches of 4 and 2 pairs
    new = sub.fit_direction(tiny, pairs, hook, **kw)
    old = ref_sub.fit_direction(tiny, ref_pairs, hook, **kw)
    assert torch.allclose(new.vector, old.vector, atol=1e-4)
    assert torch.allclose(torch.tensor(new.losses), torch.tensor(old.losses), atol=1e-4)
    assert new.settings == old.settings
    md_new = sub.mean_difference_direction(tiny, pairs, hook)
    md_old = ref_sub.mean_difference_direction(tiny, ref_pairs, hook)
    assert torch.equal(md_new.vector, md_old.vector)
    assert torch.equal(
        sub.random_direction(tiny, hook, seed=5).vector, ref_sub.random_direction(tiny, hook, seed=5).vector
    )


def test_illusion_checks_equal_reference(tiny):
    hook = "blocks.1.mlp.hook_post"
    pairs, ref_pairs = _pairs(tiny, sub), _pairs(tiny, ref_sub)
    kw = dict(epochs=1, batch_size=2, progress=False)
    new = sub.illusion_checks(tiny, pairs.in_groups(["a", "b"]), pairs.in_groups(["c"]), hook, **kw)
    old = ref_sub.illusion_checks(tiny, ref_pairs.in_groups(["a", "b"]), ref_pairs.in_groups(["c"]), hook, **kw)
    assert torch.allclose(new.direction.vector, old.direction.vector, atol=1e-4)
    assert new.row_norm == pytest.approx(old.row_norm, abs=1e-4)
    common = set(old.patches) & set(new.patches)  # the training split now runs the DAS patch only
    assert {"full/test", "das/train", "das/test", "rowspace/test", "nullspace/test", "random/test"} <= common
    for key in common:
        _same_result(new.patches[key], old.patches[key])
    for key, s in old.separation.items():
        assert torch.allclose(new.separation[key].projections, s.projections, atol=1e-3, rtol=1e-3)
