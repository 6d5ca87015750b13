"""Whether the Hugging Face hub can be reached, asked once with one quick request.

Without a network, the hub's own clients retry each file for about 30 s (with a
dozen warnings) before they give up; a model or dataset named by its hub name
gets its one clear line at once instead. In offline mode (HF_HUB_OFFLINE=1 or
HF_DATASETS_OFFLINE=1) nothing is asked: the libraries read their local cache.
"""
from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 5


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


@functools.cache
def unreachable() -> str | None:
    """Why the hub cannot be reached (None: it answered, or offline mode reads the cache)."""
    if offline():
        return None
    from huggingface_hub.constants import ENDPOINT

    try:  # urllib honours HTTPS_PROXY and friends, as the hub's clients do
        urllib.request.urlopen(urllib.request.Request(ENDPOINT, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered, if only with an error status
    except (urllib.error.URLError, OSError) as exc:
        return f"{ENDPOINT} cannot be reached: {getattr(exc, 'reason', exc)}"
    return None


def unreachable_hint() -> str | None:
    """The hub's absence as the end of a one-line error, or None if it can be reached."""
    reason = unreachable()
    return f"{reason}; with HF_HUB_OFFLINE=1 a copy in the local Hugging Face cache is used" if reason else None
