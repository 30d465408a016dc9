"""Subspace activation patching with distributed alignment search, and the checks for its illusion.

A 1-D subspace patch (Makelov, Lange, Nanda 2023, METHODS §5) runs the model on a *base* prompt and replaces
only the component of one activation along a unit direction ``v`` with the *source* prompt's::

    w' = w + ((u - w) · v) v          (w: base activation, u: source activation, at one position)

which is :class:`transformer_lens.tools.analysis.interchange.SubspaceInterchange` with a one-column basis; an
identity basis is the full-component patch, strength 0 leaves the base. The direction is learned by distributed
alignment search (DAS): a unit vector, kept on the sphere by an orthogonal parametrisation, trained with Adam on the
cross-entropy of the patched answer logits towards the *source's* answer.

Metrics, over the feature's answer tokens (one token per feature value):

- logit difference ``LD = logit(base answer) - logit(source answer)`` at the base prompt's last position;
- **FLDD** (fractional logit-difference decrease) ``= 100 * (1 - mean LD_patched / mean LD_clean)``: 0 means the
  patch did nothing, 100 that the two answers are tied, above 100 that the answer flipped;
- **interchange accuracy**: the fraction of pairs whose patched argmax among the answer tokens is the source's answer.

The illusion: at an MLP's ``hook_post`` the direction splits as ``v = v_row + v_null`` with ``v_null`` in the kernel of
the output weights ``W_out[l]`` (``[d_mlp, d_model]``; ``x -> x @ W_out`` ignores it) and ``v_row`` in their column
space. A patch along ``v`` can move the feature-correlated but causally inert variation of ``v_null`` onto a dormant
``v_row`` and so change the output although the model never uses ``v`` on its own inputs. :func:`illusion_checks`
runs the paper's checks and gives each subspace a verdict:

1. **full-component baseline** -- the whole activation patched at the same position. A 1-D patch that does much more
   than the full patch while the full patch does less than half the job is a red flag.
2. **rowspace re-patch** -- patching along ``v_row / |v_row|`` alone should keep the effect; losing more than half of
   it is a reason to be suspicious. ``|v_row|`` and ``|v_null|`` are reported.
3. **activations separate** -- clean activations projected on ``v`` (and on ``v_row``, ``v_null``) should separate by
   feature value (Cohen's d of at least 1); separating along ``v_null`` but not ``v_row`` is the illusion's signature.
4. **held-out prompts** -- the effect on held-out templates should be at least half the training effect.
5. **non-optimised directions** -- the difference of class means and a random direction are patched the same way
   for comparison; a DAS direction no better than a random one found nothing.

Modules
-------
- :mod:`~codecircuits.subspace.pairs`: :class:`PatchPairs`, the counterfactual prompt pairs, and their answer logits.
- :mod:`~codecircuits.subspace.das`: :class:`Direction`; activations at a hook; DAS (:func:`fit_direction`), the
  difference of class means and random directions (TransformerLens's :class:`LearnedSubspace`,
  ``mean_difference_basis`` and ``random_basis``).
- :mod:`~codecircuits.subspace.interchange`: :func:`patch` and :class:`PatchResult`; the patch is
  :class:`codecircuits.core.interventions.SubspaceSwap` at one position per pair, equal to TransformerLens's
  ``SubspaceInterchange`` there.
- :mod:`~codecircuits.subspace.checks`: :func:`readout_matrix`, :func:`rowspace_split`, separation and
  :func:`illusion_checks`.

Everything public is importable from here (``from codecircuits import subspace as sub; sub.patch(...)``).
"""

from .checks import (
    RULE,
    VERDICTS,
    IllusionReport,
    NormBaseline,
    Rule,
    SeedCheck,
    Separation,
    activation_separation,
    cohens_d,
    decide,
    illusion_checks,
    projection_separation,
    random_norm_baseline,
    random_rowspace_direction,
    readout_matrix,
    rowspace_basis,
    rowspace_fraction,
    rowspace_split,
)
from .controls import answer_gradient, planted_illusion, probe_direction
from .das import (
    Direction,
    activations,
    clean_activations,
    fit_direction,
    mean_difference_direction,
    random_direction,
    unit_vector,
)
from .edit import EditResult, edit_equivalence, rank1_edit, second_moment_pinv
from .interchange import PatchResult, fldd_of, patch, patched_logits, patched_vocab_logits
from .pairs import PatchPairs, answer_logits, base_residual, batch_slices, check_pairs, last_logits, start_layer

_separation = projection_separation  # the name tests/test_subspace.py knows it by

__all__ = [
    "Direction",
    "EditResult",
    "IllusionReport",
    "NormBaseline",
    "PatchPairs",
    "PatchResult",
    "RULE",
    "Rule",
    "SeedCheck",
    "Separation",
    "VERDICTS",
    "activation_separation",
    "activations",
    "answer_gradient",
    "answer_logits",
    "base_residual",
    "batch_slices",
    "check_pairs",
    "clean_activations",
    "cohens_d",
    "decide",
    "edit_equivalence",
    "fit_direction",
    "fldd_of",
    "illusion_checks",
    "last_logits",
    "mean_difference_direction",
    "patch",
    "patched_logits",
    "patched_vocab_logits",
    "planted_illusion",
    "probe_direction",
    "projection_separation",
    "random_direction",
    "random_norm_baseline",
    "random_rowspace_direction",
    "rank1_edit",
    "readout_matrix",
    "rowspace_basis",
    "rowspace_fraction",
    "rowspace_split",
    "second_moment_pinv",
    "start_layer",
    "unit_vector",
]
