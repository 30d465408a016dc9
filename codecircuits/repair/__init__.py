"""Neuron-level model repair (MINT, Gu et al., arXiv 2312.05356) with reversible value-vector edits.

A *repair case* is a line of real code that the model completes wrongly when teacher-forced along the
reference line (:mod:`~codecircuits.repair.cases`). MINT (:mod:`~codecircuits.repair.mint`) fixes each wrong
token by editing the value vectors (rows of the MLP output weights ``W_out[l][k]``) of a few neurons: it locates
candidates by gradient x activation, simulates each candidate's edit along the token's semantic direction in one
batched forward, applies the best, and repeats until the token is fixed or rolls the token's edits back.

Every edit is recorded with the row before and after (:class:`NeuronEdit`, :mod:`~codecircuits.repair.edits`), so
:meth:`Edits.undo` restores the weights bit for bit, :meth:`Edits.save` / :func:`load_edits` store and re-apply
them, and :func:`save_edited_model` writes a loadable checkpoint with the edits in it. :func:`sgd_repair`
(:mod:`~codecircuits.repair.sgd`) is the baseline that fine-tunes the MLP output weights of the same layers with
SGD (:func:`sgd_sweep` chooses its setting). :mod:`~codecircuits.repair.effects` measures what a repair does to
other prompts (:func:`side_effects`), compares MINT and SGD on one case (:func:`repair_both`), runs repairs
one after another (:func:`successive_repairs`), and sums it up over cases (:func:`summarise`, with intervals:
:func:`repair_intervals`). :class:`Checkpoint` (:mod:`~codecircuits.repair.checkpoint`) keeps a long run's finished
steps on disk so that it resumes where it stopped.

Edits act on the weights the forward pass reads: in a ``TransformerBridge`` that is the wrapped Hugging Face
module ``model.blocks[l].mlp.out`` (``down_proj`` / ``dense_4h_to_h`` / ``c_proj`` / ``fc_out``), in the bridge's
processed (folded, centred) weight space.
"""

from .cases import (
    Probe,
    RepairCase,
    ResidCache,
    evaluate_probes,
    heldout_loss,
    heldout_tokens,
    line_fixed,
    probes_of,
    repair_cases,
    same_target_probes,
    tokenize_files,
)
from .checkpoint import Checkpoint, checkpoint_key
from .edits import (
    Edits,
    NeuronEdit,
    WeightSnapshot,
    apply_edit,
    edited,
    load_edits,
    logits_digest,
    mlp_out_module,
    mlp_out_weight,
    save_edited_model,
    upper_layers,
    value_vector,
)
from .effects import repair_both, repair_intervals, side_effects, successive_repairs, summarise
from .mint import (
    RepairResult,
    TokenRepair,
    candidate_neurons,
    layer_directions,
    mint_repair,
    semantic_basis,
    simulate_edits,
)
from .sgd import CaseOutcome, sgd_repair, sgd_sweep

# the name tests/test_repair.py (written before the split) calls the simulation by
_simulate = simulate_edits

__all__ = [
    "CaseOutcome",
    "Checkpoint",
    "Edits",
    "NeuronEdit",
    "Probe",
    "RepairCase",
    "RepairResult",
    "ResidCache",
    "TokenRepair",
    "WeightSnapshot",
    "apply_edit",
    "candidate_neurons",
    "checkpoint_key",
    "edited",
    "evaluate_probes",
    "heldout_loss",
    "heldout_tokens",
    "layer_directions",
    "line_fixed",
    "load_edits",
    "logits_digest",
    "mint_repair",
    "mlp_out_module",
    "mlp_out_weight",
    "probes_of",
    "repair_both",
    "repair_cases",
    "repair_intervals",
    "same_target_probes",
    "save_edited_model",
    "semantic_basis",
    "sgd_repair",
    "sgd_sweep",
    "side_effects",
    "simulate_edits",
    "successive_repairs",
    "summarise",
    "tokenize_files",
    "upper_layers",
    "value_vector",
]
