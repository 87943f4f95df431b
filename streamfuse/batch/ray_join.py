"""Checks of a Ray cluster's address before the batch joins it: Ray's own join retries an address that cannot work
for seconds or minutes, and then says only that it failed to connect."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from typing import Any, Iterator

from streamfuse.errors import io_reason, printable

__all__ = ["check_cluster"]

_PROBE_MS = 5000  # a GCS that answered its port replies to the probe in milliseconds


def check_cluster(ray: Any, address: str) -> None:
    """Refuse, in one line, a ``HOST:PORT`` nothing listens on, where a web server answers, or whose cluster asks for
    a token this driver does not give; other forms (``auto``, ``ray://...``) are left to Ray."""
    if _answers(address):
        _check_token(ray, address)


def _answers(address: str) -> bool:
    """Whether something other than a web server answers at ``HOST:PORT`` (a GCS speaks gRPC, with or without TLS);
    False for other forms and for a port that stays silent. Refuses a port nothing listens on, or where a web server
    answers (the dashboard's port, 8265, given for the GCS's): Ray retries such a one for minutes, or for ever."""
    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as link:
            link.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = link.recv(64)
    except socket.timeout:
        return False
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {io_reason(exc)}") from None
    if reply.startswith(b"HTTP/"):
        status = printable(reply.decode("latin-1").partition("\r\n")[0])
        raise ValueError(f"no Ray cluster at {address}: a web server answers there ('{status}'); give the GCS's "
                         f"address (`ray start --head --port`, 6379 by default; 8265 is the dashboard's)")
    return bool(reply)


def _check_token(ray: Any, address: str) -> None:
    """Refuse a cluster that refuses this driver's token, or its lack of one: ray.init retried it for 20 s, a warning
    a second, and then said only that it failed to connect. One call to its GCS tells at once; a Ray without token
    authentication, or any other answer, leaves the join to ray.init."""
    refused = getattr(ray.exceptions, "AuthenticationError", None)
    client = getattr(getattr(ray, "_raylet", None), "InnerGcsClient", None)
    if refused is None or client is None:
        return
    with tempfile.TemporaryFile() as said:
        try:
            with _stderr_into(said):  # Ray's C++ warns there at each try; a refusal is said in one line below
                client.standalone(address, None, _PROBE_MS)
            refusal = False
        except refused:
            refusal = True
        except ray.exceptions.RayError:  # ray.init tries again and says what it finds
            refusal = False
        if not refusal:
            said.seek(0)
            os.write(2, said.read())
            return
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise ValueError(f"cannot join the Ray cluster at {address}: it asks for a token (token authentication); set "
                         f"RAY_AUTH_MODE=token, with the cluster's token in RAY_AUTH_TOKEN, in a file that "
                         f"RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token")
    raise ValueError(f"cannot join the Ray cluster at {address}: it refuses this driver's token (from RAY_AUTH_TOKEN, "
                     f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); give the cluster's")


@contextlib.contextmanager
def _stderr_into(file: Any) -> Iterator[None]:
    """File descriptor 2 (where Ray's C++ logs) into ``file`` inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
