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
- **interchange accuracy**: the fraction of pairs whose patched argmax is the source's answer, over the answer
  tokens (``interchange_accuracy``) and over the whole vocabulary (``interchange_accuracy_vocab``).

Every one of them comes with a 95% percentile-bootstrap interval over pairs (:mod:`~codecircuits.subspace.stats`,
resampled as :mod:`codecircuits.intervals` does).

The illusion: at an MLP's ``hook_post`` the direction splits as ``v = v_row + v_null`` with ``v_null`` in the kernel of
the output weights ``W_out[l]`` (``[d_mlp, d_model]``; ``x -> x @ W_out`` ignores it) and ``v_row`` in their column
space. A patch along ``v`` can move the feature-correlated but causally inert variation of ``v_null`` onto a dormant
``v_row`` and so change the output although the model never uses ``v`` on its own inputs. :func:`illusion_checks`
runs the paper's checks for one DAS direction per seed and :func:`decide` gives each a verdict by a fixed rule
(:data:`RULE`): **no effect** unless the held-out FLDD interval lies above ``min_effect`` and a random direction's;
**illusion** when the rowspace part is dormant -- the rowspace-only patch keeps less than ``min_fraction`` of the
effect (:func:`rowspace_fraction`, whole interval) or clean activations do not separate along ``v_row`` (Cohen's d
interval below ``min_cohens_d``); **faithful** when the direction generalises, separates, and (at an MLP) its
rowspace part is active; otherwise **inconclusive**. Beside them: the full-component patch (a 1-D patch that beats
a quiet full patch is the paper's first red flag, ``flags["exceeds_component"]``), ``|v_row|`` and ``|v_null|``
against random unit vectors (:func:`random_norm_baseline`), the difference of class means, a random direction and a
random rowspace direction (the controls of the same norm).

Controls with known answers (:mod:`~codecircuits.subspace.controls`): :func:`probe_direction` (a direction that
carries the feature) and :func:`planted_illusion` (the paper's mechanism built by hand). The patch is also a rank-1
edit of ``W_out`` (:mod:`~codecircuits.subspace.edit`, :func:`edit_equivalence`).

Modules
-------
- :mod:`~codecircuits.subspace.pairs`: :class:`PatchPairs`, the counterfactual prompt pairs, and their answer logits;
  :func:`answers_correct`, which prompts the model answers right; :func:`paren_pairs`, pairs of the number of open
  parens on the closing-paren prompts.
- :mod:`~codecircuits.subspace.das`: :class:`Direction`; activations at a hook; DAS (:func:`fit_direction`), the
  difference of class means and random directions (TransformerLens's :class:`LearnedSubspace`,
  ``mean_difference_basis`` and ``random_basis``).
- :mod:`~codecircuits.subspace.interchange`: :func:`patch` and :class:`PatchResult`; the patch is
  :class:`codecircuits.core.interventions.SubspaceSwap` at one position per pair, equal to TransformerLens's
  ``SubspaceInterchange`` there; :func:`full_patch_sweep`, the full-component patch at every layer, and
  :func:`choose_hooks`, the locations it points to.
- :mod:`~codecircuits.subspace.checks`: :func:`readout_matrix`, :func:`rowspace_split`, separation, the baselines,
  :func:`decide` and :func:`illusion_checks`.
- :mod:`~codecircuits.subspace.controls`: the positive control and the planted illusion.
- :mod:`~codecircuits.subspace.edit`: the rank-1 ``W_out`` edit equal to a patch.
- :mod:`~codecircuits.subspace.stats`: vectorised bootstrap intervals (FLDD, shares, Cohen's d).

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
from .interchange import (
    PatchResult,
    choose_hooks,
    fldd_of,
    full_patch_sweep,
    patch,
    patched_logits,
    patched_vocab_logits,
)
from .pairs import (
    PAREN_TEMPLATES,
    PatchPairs,
    answer_logits,
    answers_correct,
    base_residual,
    batch_slices,
    check_pairs,
    last_logits,
    paren_pairs,
    paren_prompt,
    start_layer,
)

_separation = projection_separation  # the name tests/test_subspace.py knows it by

__all__ = [
    "Direction",
    "EditResult",
    "IllusionReport",
    "PAREN_TEMPLATES",
    "NormBaseline",
    "PatchPairs",
    "PatchResult",
    "RULE",
    "Rule",
    "SeedCheck",
    "Separation",
    "VERDICTS",
    "activations",
    "answer_gradient",
    "answer_logits",
    "answers_correct",
    "base_residual",
    "batch_slices",
    "check_pairs",
    "choose_hooks",
    "clean_activations",
    "cohens_d",
    "decide",
    "edit_equivalence",
    "fit_direction",
    "fldd_of",
    "full_patch_sweep",
    "illusion_checks",
    "last_logits",
    "mean_difference_direction",
    "paren_pairs",
    "paren_prompt",
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
