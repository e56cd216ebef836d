"""``--storage-option KEY=VALUE`` pairs as fsspec options, without Beam.

Here, not in options.py, so that ``inspect`` and ``verify`` (which take the
same flag) start without importing Apache Beam.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from beamvec.errors import UsageError

#: Storage option names that hold credentials. Pipeline options and DoFns are
#: pickled and shipped to the runner, so these are refused: credentials belong
#: in the workers' environment (AWS variables, ADC), never on the command line.
SECRET_OPTION_NAMES = frozenset({
    "key", "secret", "token", "password", "session_token", "client_secret", "credentials",
    "access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "account_key", "sas_token", "connection_string",
})
#: gcsfs's `token` modes that name a way to find credentials, not a credential.
TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "cache", "browser"})


def parse_storage_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse (true, 3, {...}), else strings.
    Dotted keys nest: client_kwargs.endpoint_url=... . Raises UsageError."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        *parents, leaf = key.split(".")
        if leaf.lower() in SECRET_OPTION_NAMES and not (leaf == "token" and parsed in TOKEN_MODES):
            raise UsageError(
                f"--storage-option {key}=… looks like a credential, and pipeline options travel "
                "to every worker: give credentials to the workers' environment instead "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ADC)"
            )
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parsed
    return options
