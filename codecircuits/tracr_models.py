"""Models with known circuits: RASP programs compiled with tracr, saved as weights, loaded as a TransformerBridge.

``scripts/compile_tracr.py`` compiled them once (tracr needs JAX, which the project does not depend on) into
``codecircuits/data/tracr/<name>/`` (package data, installed with the package): ``model.safetensors`` and ``config.json`` (TransformerLens's own tracr converter,
``transformer_lens.utilities.tracr``), ``vocab.json`` (input token and output value ids, BOS), ``examples.json``
(what the compiled JAX model output on a few inputs) and ``ground_truth.json``: the heads and MLPs the program
uses and its true edges, by construction. Tracr writes every RASP variable into its own orthogonal block of the
residual stream, so an edge ``u -> v`` is true iff ``u`` writes into a block that ``v`` reads: the product of
``u``'s writing weights and ``v``'s reading weights is non-zero. ``effective_edges`` are the true edges whose
patching alone changes the logits for some clean/corrupted pair of ``pair_length`` tokens (every input of that
length tried); the others carry what is the same in any two prompts of equal length (the length, the positions,
BOS, the constant ``one``), or feed a selector that ignores it, so no method that contrasts equal-length
prompts can see them.

Programs (tracr's ``compiler/lib.py``; inputs of at most 5 tokens, after BOS):

- ``hist``: how often each token occurs (one selector-width head and its MLP);
- ``reverse``: the tokens reversed (length by a selector width, ``length - indices - 1`` by two MLPs, then a
  head that reads the token there);
- ``sort_unique``: distinct tokens sorted (a selector width counts the smaller tokens, a head fetches);
- ``count_other``: how many tokens differ from this one, ``length - hist`` (two heads in layer 0).

The bridge: TransformerLens's native model (no norms, bidirectional attention) with its attention wrapped in
``PositionEmbeddingsAttentionBridge`` instead of the plain ``AttentionBridge`` that ``boot_native`` uses, which
gives no split query/key/value inputs (``set_use_split_qkv_input`` refuses it). That bridge reimplements the same
attention (softmax of ``q k / sqrt(d_head)``, no rotary since the model has learned positions), so it computes
what the compiled program computes, and it honours ``use_split_qkv_input``: ``blocks.L.hook_q_input``,
``hook_k_input``, ``hook_v_input`` ``[batch, pos, head, d_model]`` feed each head's own projections.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .core.metrics import RowwiseMetric, logit_diff
from .errors import InputError

#: the compiled programs, one folder each (package data)
DATA_DIR = Path(__file__).resolve().parent / "data" / "tracr"
PROGRAMS = ("hist", "reverse", "sort_unique", "count_other")


@dataclass(frozen=True)
class TracrVocab:
    """The token ids of a compiled program: inputs (with ``bos``, and ``pad``, which tracr never attends to
    and we never use) and output values (the unembedding's columns)."""

    bos: str
    pad: str
    max_seq_len: int
    input_tokens: tuple
    input_ids: dict
    output_ids: dict
    program: str = ""

    @classmethod
    def from_json(cls, d: dict) -> TracrVocab:
        return cls(bos=d["bos"], pad=d["pad"], max_seq_len=int(d["max_seq_len"]), input_tokens=tuple(d["input_tokens"]),
                   input_ids={k: int(v) for k, v in d["input"]}, output_ids={k: int(v) for k, v in d["output"]},
                   program=d.get("program", ""))

    @property
    def output_values(self) -> list:
        """Output values in id order: ``output_values[i]`` is the value of logit column ``i``."""
        return [v for v, _ in sorted(self.output_ids.items(), key=lambda kv: kv[1])]

    def encode(self, sequences) -> torch.Tensor:
        """``[batch, 1 + n]`` token ids of equally long input sequences, each with BOS prepended."""
        sequences = [list(s) for s in sequences]
        if not sequences:
            raise InputError("encode() needs at least one input sequence.")
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise InputError(f"Input sequences must be equally long (tracr models are run unpadded); got {lengths}.")
        n = lengths.pop()
        if not 1 <= n <= self.max_seq_len:
            raise InputError(f"Input sequences must have 1..{self.max_seq_len} tokens; got {n}.")
        unknown = sorted({repr(t) for s in sequences for t in s if t not in self.input_tokens})
        if unknown:
            raise InputError(f"Tokens {', '.join(unknown)} are not in this program's vocabulary {self.input_tokens}.")
        return torch.tensor([[self.input_ids[self.bos]] + [self.input_ids[t] for t in s] for s in sequences])

    def decode(self, logits: torch.Tensor) -> list[list]:
        """The program's output values from ``logits [batch, 1 + n, d_vocab_out]`` (BOS's position dropped)."""
        values = self.output_values
        return [[values[i] for i in row[1:].tolist()] for row in logits.argmax(-1)]


@dataclass(frozen=True)
class TracrCircuit:
    """The known circuit of a compiled program, in EAP-IG's edge names (``input->a0.h0<q>``, ``m1->logits``)."""

    heads: tuple[str, ...]
    mlps: tuple[str, ...]
    true_edges: frozenset[str]
    all_edges: tuple[str, ...]
    effective_edges: frozenset[str] = frozenset()
    pair_length: int = 0
    carries: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> TracrCircuit:
        return cls(heads=tuple(d["heads"]), mlps=tuple(d["mlps"]), true_edges=frozenset(d["true_edges"]),
                   all_edges=tuple(d["all_edges"]), effective_edges=frozenset(d.get("effective_edges", ())),
                   pair_length=int(d.get("pair_length", 0)), carries=dict(d.get("carries", {})))

    def labels(self, edges=None, *, effective: bool = False) -> torch.Tensor:
        """``[len(edges)]`` booleans: which of ``edges`` (default: every edge of the graph) are true (with
        ``effective``: true and seen by equal-length pairs); unknown names are an error."""
        edges = list(self.all_edges if edges is None else edges)
        known = set(self.all_edges)
        unknown = [e for e in edges if e not in known]
        if unknown:
            raise InputError(f"Edges {unknown[:5]} are not edges of this program's graph.")
        truth = self.effective_edges if effective else self.true_edges
        return torch.tensor([e in truth for e in edges])


def resolve(name_or_dir) -> Path:
    """The data folder of a compiled program: a name in :data:`PROGRAMS` or a folder path."""
    path = Path(name_or_dir)
    if str(name_or_dir) in PROGRAMS:
        path = DATA_DIR / str(name_or_dir)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise InputError(
            f"{name_or_dir!r} is neither one of the compiled tracr programs ({', '.join(PROGRAMS)}) nor a folder "
            "with config.json and model.safetensors (made by scripts/compile_tracr.py)."
        )
    return path


def _split_qkv_attention(cfg):
    """An attention bridge over ``NativeAttention`` that supports split query/key/value inputs."""
    from transformer_lens.model_bridge.generalized_components import LinearBridge
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    return PositionEmbeddingsAttentionBridge(name="attn", config=cfg,
                                             submodules={n: LinearBridge(name=n) for n in ("q", "k", "v", "o")},
                                             is_causal=cfg.attention_dir == "causal")


def build_bridge(config: dict, state_dict: dict[str, torch.Tensor]):
    """A TransformerBridge of the native model with ``config`` (TransformerBridgeConfig fields) and tracr's
    weights, in compatibility mode with no weight processing (the weights stay as compiled)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import NativeModel
    from transformer_lens.model_bridge.supported_architectures.native import _make_block_submodules

    cfg = TransformerBridgeConfig(**config)
    if cfg.normalization_type is not None or cfg.positional_embedding_type not in (None, "standard"):
        raise InputError("Tracr models have no norms and learned positions; this config is not one.")
    model = NativeModel(copy.deepcopy(cfg))
    for block in model.layers:
        # the attributes PositionEmbeddingsAttentionBridge reads from the module it wraps
        block.attn.head_dim = cfg.d_head
        block.attn.scaling = 1.0 / block.attn.scale

    def use_split_attention(adapter) -> None:
        blocks = adapter.component_mapping["blocks"]
        submodules = _make_block_submodules(adapter.cfg)
        submodules["attn"] = _split_qkv_attention(adapter.cfg)
        adapter.component_mapping["blocks"] = type(blocks)(name="layers", config=adapter.cfg, submodules=submodules)

    bridge = build_bridge_from_module(
        model, "TransformerLensNative", tl_config=cfg, model_name="tracr", post_adapter_hook=use_split_attention
    )
    result = bridge.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        raise InputError(f"Unexpected tracr weights {result.unexpected_keys}.")
    loaded = {k.replace("._original_component", ""): v for k, v in bridge.original_model.state_dict().items()}
    wrong = [k for k, v in state_dict.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if wrong:
        raise InputError(f"Tracr weights {wrong} did not load.")
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    return bridge


def load_tracr(name_or_dir) -> tuple[Any, TracrVocab, TracrCircuit]:
    """``(bridge, vocab, ground_truth)`` of a compiled tracr program (a name in :data:`PROGRAMS` or a folder)."""
    from safetensors.torch import load_file

    path = resolve(name_or_dir)
    config = json.loads((path / "config.json").read_text())
    bridge = build_bridge(config, load_file(str(path / "model.safetensors")))
    vocab = TracrVocab.from_json(json.loads((path / "vocab.json").read_text()))
    truth_file = path / "ground_truth.json"
    truth = TracrCircuit.from_json(json.loads(truth_file.read_text())) if truth_file.is_file() else None
    return bridge, vocab, truth


# --- the programs in plain Python -------------------------------------------------------------------------------


def run_program(name: str, seq) -> list:
    """What the RASP program ``name`` outputs on ``seq`` (without BOS), computed in plain Python."""
    seq = list(seq)
    n = len(seq)
    if name == "hist":
        return [seq.count(t) for t in seq]
    if name == "reverse":
        return seq[::-1]
    if name == "sort_unique":
        return sorted(seq)
    if name == "count_other":
        return [n - seq.count(t) for t in seq]
    raise InputError(f"Unknown tracr program {name!r}; choose one of {', '.join(PROGRAMS)}.")


#: tokens per input in :func:`tracr_pairs` (sort_unique's keys must be distinct: 4 of its 5 values)
PAIR_LENGTH = {"hist": 5, "reverse": 5, "sort_unique": 4, "count_other": 5}


def _sample(name: str, vocab: TracrVocab, length: int, rng: random.Random) -> list:
    tokens = list(vocab.input_tokens)
    if name == "sort_unique":
        return rng.sample(tokens, length)
    return [rng.choice(tokens) for _ in range(length)]


def all_inputs(name: str, vocab: TracrVocab, length: int) -> list[list]:
    """Every valid input of ``length`` tokens (distinct tokens for ``sort_unique``)."""
    tokens = list(vocab.input_tokens)
    if name == "sort_unique":
        return [list(p) for p in itertools.permutations(tokens, length)]
    return [list(p) for p in itertools.product(tokens, repeat=length)]


@dataclass(frozen=True)
class TracrPairs:
    """Clean and corrupted prompts of equal length, their program outputs and a per-example metric.

    ``metric(logits) -> [batch]``: over the output positions where the clean and corrupted outputs differ, the
    mean of ``logit[clean output] - logit[corrupted output]``
    (:func:`codecircuits.core.metrics.logit_diff` of the answers, row-wise, so edge attribution may batch it).
    It is high on the clean run and its negative on the corrupted run."""

    clean: list
    corrupted: list
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    clean_answers: torch.Tensor  # [batch, pos] output ids (BOS's position: -1)
    corrupted_answers: torch.Tensor
    differ: torch.Tensor  # [batch, pos] bool
    metric: RowwiseMetric


def _answers(name: str, vocab: TracrVocab, seqs: list) -> torch.Tensor:
    return torch.tensor([[-1] + [vocab.output_ids[v] for v in run_program(name, s)] for s in seqs])


def tracr_pairs(name: str, n: int, seed: int = 0, *, length: int | None = None) -> TracrPairs:
    """``n`` clean/corrupted prompt pairs of ``length`` tokens (default :data:`PAIR_LENGTH`) for program
    ``name``, each pair with at least one output position where the program's outputs differ."""
    if name not in PROGRAMS:
        raise InputError(f"Unknown tracr program {name!r}; choose one of {', '.join(PROGRAMS)}.")
    vocab = TracrVocab.from_json(json.loads((DATA_DIR / name / "vocab.json").read_text()))
    length = PAIR_LENGTH[name] if length is None else int(length)
    rng = random.Random(seed)
    clean, corrupted = [], []
    while len(clean) < n:
        a, b = _sample(name, vocab, length, rng), _sample(name, vocab, length, rng)
        if run_program(name, a) != run_program(name, b):
            clean.append(a)
            corrupted.append(b)
    clean_answers, corrupted_answers = _answers(name, vocab, clean), _answers(name, vocab, corrupted)
    return TracrPairs(clean=clean, corrupted=corrupted, clean_tokens=vocab.encode(clean),
                      corrupted_tokens=vocab.encode(corrupted), clean_answers=clean_answers,
                      corrupted_answers=corrupted_answers, differ=clean_answers != corrupted_answers,
                      metric=logit_diff(clean_answers, corrupted_answers, rows=True))


__all__ = [
    "DATA_DIR",
    "PAIR_LENGTH",
    "PROGRAMS",
    "TracrCircuit",
    "TracrPairs",
    "TracrVocab",
    "all_inputs",
    "build_bridge",
    "load_tracr",
    "resolve",
    "run_program",
    "tracr_pairs",
]
