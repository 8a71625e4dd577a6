"""Where the weights are: a hub id, a diffusers folder, a single file or ``random:<size>``.

:func:`locate_source` says which of these a source is; :func:`load_diffusers` reads a diffusers
layout from a folder or from the Hugging Face Hub (its cache first). Every way this can fail
ends in one line naming the source, the cache folder and how to pass local weights. Without a
network the hub is not waited for: :func:`hub_reachable` answers within seconds and the load
goes on from the cache alone, as with ``HF_HUB_OFFLINE=1`` (``docs/algorithm.md`` §5).

torch, diffusers and huggingface_hub are imported inside the functions.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

from ..core.params import DEFAULT_MODEL
from ..errors import BadInputError

__all__ = [
    "HUB_TIMEOUT_S",
    "ModelFormatError",
    "ModelNotFoundError",
    "first_line",
    "hf_cache_dir",
    "hub_endpoint",
    "hub_file",
    "hub_offline",
    "hub_reachable",
    "is_random_source",
    "load_diffusers",
    "locate_source",
    "resolve_source",
]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
RANDOM_PREFIX = "random:"
HOW_TO = (
    "To use local weights, pass a diffusers folder (with model_index.json) or a .safetensors/.ckpt file, "
    "e.g. --model /path/to/stable-diffusion-v1-4"
)
#: Seconds to wait for the Hub: the reachability check, and each metadata request after it.
HUB_TIMEOUT_S = 3.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(BadInputError):
    """The weights are not where the user said (or not in the Hugging Face cache)."""


class ModelFormatError(ModelNotFoundError):
    """Something is there, but it is not readable Stable Diffusion 1.x/2.x weights."""


# --- what a source names -------------------------------------------------------------------------


def is_random_source(source) -> bool:
    """Whether ``source`` names a random-weight model (``random:tiny``, ``random:sd15``)."""
    return isinstance(source, str) and source.startswith(RANDOM_PREFIX)


def resolve_source(source):
    """The folder of a ``random:`` model (built in the user cache on first use), else ``source``."""
    if not is_random_source(source):
        return source
    from .random_sd import random_model_folder

    return str(random_model_folder(source))


def locate_source(source: str | os.PathLike | None) -> tuple[str, str]:
    """``(kind, where)``, kind one of ``"random"``, ``"folder"``, ``"file"``, ``"hub"``.

    ``where`` is the folder of a random model, the resolved path of a file or folder, or the hub
    id. An existing path wins over a hub id; ``None`` is :data:`~maskdiffusion.core.params.DEFAULT_MODEL`.
    """
    if is_random_source(source):
        return "random", resolve_source(source)
    text = os.fspath(source) if source is not None else DEFAULT_MODEL
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        return ("file" if path.is_file() else "folder"), str(path)
    looks_like_path = isinstance(source, os.PathLike) or text.lower().endswith(SINGLE_FILE_SUFFIXES)
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelNotFoundError(f"Model path '{path.absolute()}' does not exist. {HOW_TO}.")
    return "hub", text


# --- the Hugging Face Hub ---------------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The hub cache folder, read from the environment now (not when huggingface_hub was imported)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    """The Hub address huggingface_hub sends requests to (``HF_ENDPOINT`` as it read it)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub (or to the proxy in front of it) opens within ``timeout`` s.

    Name lookup has no timeout of its own, so the attempt runs in a daemon thread that is
    given up on after ``timeout``: a machine without network answers ``False`` in that time.
    """
    host, port = _connect_target(endpoint or hub_endpoint())
    if not host:
        return False
    answer: list[bool] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, name="maskdiffusion-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer) and answer[0]


def _connect_target(endpoint: str) -> tuple[str | None, int]:
    """(host, port) a request to ``endpoint`` connects to first: its proxy, if one is set for it."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    url = urlsplit(endpoint)
    proxy = None
    if url.hostname and not proxy_bypass(url.hostname):
        proxies = getproxies()
        proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy:
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return target.hostname, target.port or 80
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


# --- diffusers folders and hub ids ------------------------------------------------------------------


def load_diffusers(source: str, hub: bool) -> dict:
    """The four components and the scheduler config of a diffusers layout (folder or hub id)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if hub:
        kwargs = {"cache_dir": str(hf_cache_dir())}
        _check_model_index(_hub_model_index(source, kwargs), source)
    else:
        kwargs = {}
        _check_model_index(Path(source) / "model_index.json", source)

    loaders = {
        "tokenizer": CLIPTokenizer.from_pretrained,
        "text_encoder": CLIPTextModel.from_pretrained,
        "vae": AutoencoderKL.from_pretrained,
        "unet": UNet2DConditionModel.from_pretrained,
    }
    parts = {}
    for name, load in loaders.items():
        try:
            parts[name] = load(source, subfolder=name, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelFormatError(f"Could not load the {name} of '{source}': {first_line(err)}") from err
    try:
        parts["scheduler_config"] = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kwargs))
    except (OSError, ValueError):
        from .bundled import bundled_scheduler_config

        parts["scheduler_config"] = bundled_scheduler_config("sd1")
    return parts


def _hub_model_index(repo_id: str, kwargs: dict) -> Path:
    """``model_index.json`` of a hub repo (:func:`hub_file`)."""
    return hub_file(repo_id, "model_index.json", kwargs, "a diffusers Stable Diffusion repository", HOW_TO)


def hub_file(repo_id: str, filename: str, kwargs: dict, kind: str, how_to: str) -> Path:
    """Fetch (or find in the cache) ``filename`` of a hub repo; the clear errors live here.

    ``kind`` says what the repo should be, ``how_to`` how to pass local weights instead.
    Sets ``kwargs["local_files_only"]`` for the files that follow: True when downloads are off
    or the Hub cannot be reached, so they are read from the cache without waiting.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if hub_offline():
        reason = "downloads are off (HF_HUB_OFFLINE=1)"
    elif not hub_reachable():
        reason = f"it cannot be downloaded (the Hugging Face Hub could not be reached at {hub_endpoint()})"
    else:
        reason = None
    kwargs["local_files_only"] = reason is not None
    timeout = {} if reason else {"etag_timeout": HUB_TIMEOUT_S}
    try:
        return Path(hf_hub_download(repo_id, filename, **kwargs, **timeout))
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(
            f"Model '{repo_id}' is neither a local path nor a repository on the Hugging Face Hub "
            f"(gated or private ones need `hf auth login`). {how_to}."
        ) from err
    except LocalEntryNotFoundError as err:
        missing = err
    except EntryNotFoundError as err:
        raise ModelFormatError(f"'{repo_id}' on the Hugging Face Hub is not {kind} (no {filename}). {how_to}.") from err
    except Exception as err:
        missing = err
    reason = reason or f"it could not be downloaded ({first_line(missing)})"
    raise ModelNotFoundError(
        f"Model '{repo_id}' is neither a local path nor in the Hugging Face cache ({kwargs['cache_dir']}), "
        f"and {reason}. {how_to}."
    ) from missing


def _check_model_index(index_file: Path, source: str) -> None:
    import json

    folder = index_file.parent
    if not index_file.is_file():
        hint = ""
        files = sorted(p.name for p in folder.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES)
        if files:
            hint = f" It holds {files[0]}: pass that file itself."
        raise ModelFormatError(
            f"'{source}' is not a diffusers Stable Diffusion folder: model_index.json is missing.{hint} {HOW_TO}."
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"'{index_file}' is not readable JSON: {first_line(err)}") from err
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        raise ModelFormatError(
            f"'{source}' is not a Stable Diffusion 1.x/2.x model: model_index.json lists no {', '.join(missing)}."
        )


def first_line(err: BaseException) -> str:
    """An error's message cut to its first line (at most 300 characters)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
