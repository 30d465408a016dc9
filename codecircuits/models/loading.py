"""``load_model``: one loader for hooked code models (TransformerLens 4 ``TransformerBridge``).

Accepted names, in the order they are tried:

1. a shipped model's short name (``smollm2-135m``, ``gemma3-270m``, ``cc-py-neox``);
2. a local Hugging Face directory;
3. a registry short name (``codellama-7b``) or any hub id (``org/name``): loaded from the Hugging Face
   cache if it is there, else downloaded when the hub is reachable, else a clear error within seconds.

Weights are read from safetensors only, and remote code runs only when the caller passes
``trust_remote_code=True``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import CheckpointError, ModelUnavailableError, UnknownModelError, UnsupportedArchitectureError
from . import cache
from .kv_cache import forward_cache_to_attention
from .registry import REGISTRY, ModelEntry, lookup

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "shipped"
# the whole reachability check (connection and TLS handshake) ends within this many seconds, so a hub name with
# no network fails within 2 s; with HF_HUB_OFFLINE=1 it fails at once. Downloads, once the hub answered, wait
# longer for each file's metadata.
HUB_TIMEOUT_S = 1.5
DOWNLOAD_TIMEOUT_S = 10.0
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.py"]


def _default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


# --------------------------------------------------------------------------------------------------------
# resolving a name to a local directory


def supported_architectures() -> set[str]:
    """Hugging Face model classes (``LlamaForCausalLM`` ...) that TransformerBridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return set(SUPPORTED_ARCHITECTURES)


def check_checkpoint_dir(path: Path, *, trust_remote_code: bool = False) -> dict:
    """Validate a local checkpoint directory and return its config; raise a clear error otherwise."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{path} is not a Hugging Face checkpoint: it has no config.json. Point load_model at the "
            "directory that holds config.json, the *.safetensors weights and the tokenizer files."
        )
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}).") from None
    if config.get("auto_map") and not trust_remote_code:
        raise CheckpointError(
            f"The checkpoint at {path} needs remote code (its config.json has an auto_map) and codecircuits "
            "never runs remote code unless asked. Read the code first, then pass trust_remote_code=True."
        )
    if not any(path.glob("*.safetensors")):
        bins = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        extra = f" It has {', '.join(bins)}; convert them to safetensors first." if bins else ""
        raise CheckpointError(
            f"No *.safetensors weights in {path}. codecircuits loads weights from safetensors only "
            f"(pickled .bin files can run code when loaded).{extra}"
        )
    archs = config.get("architectures") or []
    supported = supported_architectures()
    if archs and not any(a in supported for a in archs) and not config.get("auto_map"):
        close = difflib.get_close_matches(archs[0], sorted(supported), n=3)
        hint = f" Closest supported: {', '.join(close)}." if close else ""
        raise UnsupportedArchitectureError(
            f"TransformerLens's TransformerBridge has no adapter for {', '.join(archs)} (from {cfg_file}).{hint} "
            "See transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES."
        )
    if not archs and not config.get("auto_map"):
        raise CheckpointError(f"{cfg_file} names no architectures; cannot tell which model class to build.")
    return config


def _shipped_dir(entry: ModelEntry) -> Path:
    if entry.source == "shipped":
        d = SHIPPED_DIR / entry.name
        if not (d / "config.json").is_file():
            raise ModelUnavailableError(
                f"The shipped model {entry.name!r} is missing from {d}; reinstall codecircuits "
                "or train it with `codecircuits train --arch neox --out DIR` and load DIR."
            )
        return d
    from .gguf import convert_gguf  # noqa: F401  (heavy import only when needed)

    d = cache.model_cache_dir(entry.name)
    if cache.is_complete(d):
        return d
    if d.exists():
        log.warning("cached %s at %s is partial or corrupt; rebuilding it", entry.name, d)
    return _build_gguf_model(entry, d)


def _build_gguf_model(entry: ModelEntry, out_dir: Path) -> Path:
    from .gguf import convert_gguf, gguf_in_package

    if entry.name == "gemma3-270m":
        from .gemma import assembled_gguf

        gguf = assembled_gguf()
        try:
            return convert_gguf(gguf, out_dir, source={"model": entry.name, "package": entry.package})
        finally:  # 253 MB that the chunk packages can rebuild at any time
            gguf.unlink(missing_ok=True)
    gguf = gguf_in_package(entry.package)
    return convert_gguf(gguf, out_dir, source={"model": entry.name, "package": entry.package})


def _hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the hub answers a TLS handshake within ``timeout`` seconds in all (one try, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import ssl
    import time

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout) as sock:
            if url.scheme == "https":
                ctx = ssl.create_default_context()
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                with ctx.wrap_socket(sock, server_hostname=url.hostname):
                    pass
            return True
    except (OSError, ssl.SSLError):
        return False


def _unavailable(repo_id: str, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"The weights of {repo_id!r} are not in the local Hugging Face cache and {why}. "
        "Provide them in one of two ways: (1) download the model elsewhere (its config.json, *.safetensors "
        "and tokenizer files) and pass that directory to load_model; or (2) populate the Hugging Face cache "
        "(HF_HOME / HF_HUB_CACHE) on this machine, e.g. by copying it from a machine where "
        f"`huggingface-cli download {repo_id}` ran."
    )


def _hub_dir(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if not _hub_reachable():
        raise _unavailable(repo_id, "the hub cannot be reached from this machine")
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, etag_timeout=DOWNLOAD_TIMEOUT_S)
        )
    except Exception as e:  # any failure of the download is the same situation for the user
        raise _unavailable(
            repo_id, f"downloading it failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None) -> tuple[Path, str]:
    """Map a name to a local checkpoint directory (converting or downloading if needed) and a display name."""
    s = str(name_or_path)
    entry = lookup(s)
    if entry is not None and entry.source in ("gguf", "shipped"):
        return _shipped_dir(entry), entry.name
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file; load_model wants a checkpoint directory (with config.json).")
        return p, p.name
    if entry is not None:
        return _hub_dir(entry.hf_id, revision), entry.name
    if s.count("/") == 1 and not s.startswith((".", "/", "~")):
        return _hub_dir(s, revision), s
    close = difflib.get_close_matches(s.lower(), list(REGISTRY), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {s!r}: it is not a shipped model, not a registry name, not an existing directory and "
        f"not a hub id of the form 'org/name'.{hint} `codecircuits models` lists the registry."
    )


# --------------------------------------------------------------------------------------------------------
# loading


def mlp_input_norms(bridge) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each block's norm in front of its MLP, ``(weight, bias)``, read before compatibility mode folds them into the
    weights that follow: the model's own MLP input is ``weight ⊙ x̂ + bias``, where the bridge's ``mlp.hook_in`` then
    reads ``x̂``. Transcoders trained on the model's own activations (circuit-tracer's and SAELens's sets) need it to
    read the bridge (:meth:`codecircuits.transcoders.TranscoderSet.for_model`)."""
    out = {}
    for layer, block in enumerate(bridge.blocks):
        norm = getattr(block, "ln2", None) or getattr(block, "ln1", None)
        module = getattr(norm, "_original_component", norm)
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        bias = getattr(module, "bias", None)
        out[layer] = (weight.detach().clone().float(), None if bias is None else bias.detach().clone().float())
    return out


def apply_bos(model, bos: str | None) -> None:
    """Apply a registry entry's tokenization decision: ``"default"``, ``None`` (no BOS) or a BOS token string."""
    if bos == "default":
        return
    if bos is None:
        model.cfg.default_prepend_bos = False
        return
    tok = model.tokenizer
    ids = tok(bos, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CheckpointError(f"The registry's BOS token {bos!r} is not a single token of this tokenizer.")
    if tok.bos_token != bos:
        tok.bos_token = bos
        # TransformerLens loads tokenizers with add_bos_token=True: their post-processor inserts the BOS,
        # and it keeps the old token until rebuilt
        if hasattr(tok, "update_post_processor"):
            tok.update_post_processor()
    model.cfg.default_prepend_bos = True
    got = model.to_tokens("x", prepend_bos=True)[0, 0].item()
    if got != ids[0]:
        raise CheckpointError(f"Could not make {bos!r} this tokenizer's BOS token (to_tokens starts with id {got}).")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    compatibility_mode: bool = True,
):
    """Load a code LM as a TransformerLens 4 ``TransformerBridge`` with compatibility mode enabled.

    Compatibility mode folds layer norms, centres the unembedding and gives the classic hook names
    (``blocks.{l}.hook_resid_pre``, ``attn.hook_z``, ``mlp.hook_post``, ...).

    Args:
        name_or_path: shipped short name, registry name, local Hugging Face directory, or hub id.
        device: defaults to ``"cuda"`` when available, else ``"cpu"``.
        dtype: defaults to float32.
        trust_remote_code: run a checkpoint's own modelling code (off unless you ask).
        revision: hub revision, for hub ids.
        compatibility_mode: set False for the raw bridge (HF numerics, new hook names only).
    """
    # find the weights first: a hub name that cannot be had fails before the seconds-long imports below
    path, display = resolve(name_or_path, revision=revision)
    check_checkpoint_dir(path, trust_remote_code=trust_remote_code)
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    device = str(device or _default_device())
    dtype = dtype or torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code, attn_implementation="eager").eval()
        bridge = TransformerBridge.boot_transformers(
            str(path), hf_model=hf_model, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        if compatibility_mode:
            bridge.codecircuits_mlp_input_norm = mlp_input_norms(bridge)
            bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    forward_cache_to_attention(bridge)
    entry = lookup(str(name_or_path))
    if entry is not None:
        apply_bos(bridge, entry.bos)
    bridge.cfg.model_name = display
    bridge.codecircuits_path = str(path)  # where the weights came from (for reports and reproducibility)
    # how to load the same model again (the workers of codecircuits.distributed each load their own replica)
    bridge.codecircuits_load = {
        "name_or_path": str(path),
        "dtype": str(dtype).removeprefix("torch."),
        "trust_remote_code": bool(trust_remote_code),
        "compatibility_mode": bool(compatibility_mode),
        "bos": "default" if entry is None else entry.bos,  # the registry's BOS decision, for apply_bos
    }
    return bridge
