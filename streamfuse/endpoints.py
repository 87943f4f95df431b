"""The host of a ``tcp://`` ZeroMQ endpoint, and the publisher's bind (its CURVE keys, the consumers it lets in, and
its IP version).

libzmq takes an IPv6 address only on a socket with ``ZMQ_IPV6`` set: without it a bind to ``tcp://[::1]:5555`` fails
(ENODEV) and a connect to it retries in silence forever. The option is set only where the address needs it: a socket
with it resolves a host name to an IPv6 address first (``localhost`` to ``::1`` on most machines), which a publisher
bound to ``127.0.0.1`` never answers.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from streamfuse.sticky import stuck_owner, user_name

__all__ = ["tcp_host", "is_ipv6", "reachable_from_other_machines", "faces_network", "bind_shown", "url_host", "bind",
           "close_bound", "ipc_refusal"]

log = logging.getLogger(__name__)
# the wait in close_bound for libzmq's I/O thread to close a closed socket's listener (milliseconds; longer
# on a loaded machine); past it the close returns all the same
_LISTENER_CLOSE_S = 10.0
_monitors = itertools.count()  # each close's own monitor address: libzmq frees an inproc one only after its close


def tcp_host(endpoint: str) -> str | None:
    """The host of a ``tcp://[SOURCE;]HOST:PORT`` endpoint as written (an IPv6 address in brackets); None for other
    transports.

    >>> tcp_host("tcp://[::1]:5555"), tcp_host("tcp://10.0.0.2;pub.local:5555"), tcp_host("ipc:///tmp/s")
    ('[::1]', 'pub.local', None)
    """
    scheme, _, address = endpoint.partition("://")
    return address.rpartition(";")[2].rpartition(":")[0] if scheme == "tcp" else None


def is_ipv6(host: str) -> bool:
    """True for an IPv6 address, in brackets or not (``[::1]``, ``::``); False for IPv4 addresses and names."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).version == 6
    except ValueError:
        return False


def reachable_from_other_machines(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint whose host is not loopback (``tcp://0.0.0.0:5555``, a LAN address, a host name
    other than ``localhost``); no lookup here, so a bind never waits for a resolver (a consumer's names are judged
    by :func:`streamfuse.connection_watch.on_this_host`, from the lookup it makes anyway)."""
    host = tcp_host(endpoint)
    return host is not None and faces_network(host)


def faces_network(host: str) -> bool:
    """True for a host to bind (``0.0.0.0``, ``''``: every address; a LAN address; a name other than ``localhost``)
    that other machines can reach; no lookup.

    >>> faces_network("127.0.0.1"), faces_network("[::1]"), faces_network("localhost"), faces_network("")
    (False, False, False, True)
    """
    try:
        return not ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:  # a host name: localhost is loopback by RFC 6761; assume any other faces the network
        return host != "localhost"


def bind_shown(host: str) -> str:
    """A host to bind as a message names it: ``''`` binds every address."""
    return host or "every address ('')"


def url_host(host: str) -> str:
    """``host`` as a URL's: an IPv6 address in brackets; every address ('') as this machine's name for itself."""
    return f"[{host}]" if ":" in host else host or "localhost"


def bind(sock: zmq.Socket, endpoint: str, curve_secret_file: str = "", curve_clients_dir: str = "",
         unsent_bytes: int = 0) -> ThreadAuthenticator | None:
    """Bind ``sock`` to ``endpoint``, with ``ZMQ_IPV6`` for an IPv6 address, as a CURVE server with the secret key
    of ``curve_secret_file`` (a file made by ``zmq.auth.create_certificates``; empty = plain). A ``tcp://``
    endpoint's connections hold at most ``unsent_bytes`` not yet sent in the kernel (0: the kernel's own limit).

    With ``curve_clients_dir`` too, only the clients whose public keys (``.key`` files) are in that folder get in
    ("ironhouse"): a ZAP handler, started in the socket's context, checks each handshake. The socket must have a
    context of its own (the handler answers for every CURVE server in it). Returns that handler (stop it before the
    context ends), else None.

    Raises:
        FileNotFoundError: ``curve_secret_file`` or ``curve_clients_dir`` does not exist.
        ValueError: the file holds no secret key, the folder no public key.
        zmq.ZMQError: ``endpoint`` cannot be bound.
    """
    auth = None
    if curve_secret_file:
        sock.curve_secretkey = _load_secret(curve_secret_file)
        sock.curve_server = True
        if curve_clients_dir:
            auth = _allow_only(sock.context, curve_clients_dir)
    host = tcp_host(endpoint)
    if host is not None and is_ipv6(host):
        sock.setsockopt(zmq.IPV6, 1)
    # the bind posts its listening socket's descriptor to a monitor before it returns
    monitor = sock.get_monitor_socket(zmq.EVENT_LISTENING) if unsent_bytes and host is not None else None
    try:
        _check_ipc_path(endpoint)
        sock.bind(endpoint)
        if monitor is not None and monitor.poll(1000):
            _cap_unsent(recv_monitor_message(monitor)["value"], unsent_bytes)
    except BaseException:
        if auth is not None:
            auth.stop()
        raise
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
    return auth


def close_bound(sock: zmq.Socket, linger: int | None = None) -> None:
    """Close ``sock``, bound to one endpoint, and return once its listening socket (``tcp://``, ``ipc://``) is closed.

    libzmq closes a closed socket's listener on its I/O thread, after ``zmq_close`` has returned: a publisher made
    again at once on the same endpoint (a stack restarting its publishing part) was refused as "already in use",
    7 times in 30 on ``tcp://``. The queued messages are still sent after this returns, for ``linger`` ms.
    """
    endpoint = "" if sock.closed else sock.getsockopt_string(zmq.LAST_ENDPOINT)
    if not endpoint.startswith(("tcp://", "ipc://")):  # unbound, or inproc://: no listener
        sock.close(linger=linger)
        return
    monitor = sock.get_monitor_socket(zmq.EVENT_CLOSED | zmq.EVENT_CLOSE_FAILED,
                                      f"inproc://streamfuse-close-{os.getpid()}-{next(_monitors)}")
    try:
        sock.close(linger=linger)
        if not monitor.poll(_LISTENER_CLOSE_S * 1000):
            log.warning("%s: libzmq had not closed the listener %.0f s after the socket's close", endpoint,
                        _LISTENER_CLOSE_S)
    finally:
        monitor.close(linger=0)


def _cap_unsent(listener_fd: int, unsent_bytes: int) -> None:
    """Set ``TCP_NOTSENT_LOWAT`` on libzmq's listening socket, which the connections it accepts inherit: where the
    platform has none, the kernel's own limit stays."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None:
        return
    listener = socket.socket(fileno=listener_fd)
    try:
        listener.setsockopt(socket.IPPROTO_TCP, option, unsent_bytes)
    finally:
        listener.detach()  # libzmq's to close


def _check_ipc_path(endpoint: str) -> None:
    """libzmq deletes whatever is at an ``ipc://`` path before it binds there: a file of the user's was lost, and a
    running publisher's socket was taken over in silence (on ``tcp://`` a second bind is refused). Both are refused
    here, at once; a socket that nothing listens on any more (left by a run that was killed, or by a publisher closed
    by :func:`close_bound`) is replaced as before.

    Raises:
        FileExistsError: something other than a socket is at the path.
        zmq.ZMQError: EADDRINUSE, a publisher is bound there.
    """
    path = _ipc_path(endpoint)
    if not path:
        return
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there (a missing folder: libzmq's bind says so)
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"cannot bind endpoint {endpoint}: {path} exists and is not a socket (binding would "
                              f"delete it); choose another path")
    if (owner := stuck_owner(path)) is not None:  # libzmq's bind could not replace it: "already in use", said
        raise FileExistsError(f"cannot bind endpoint {endpoint}: {path} is a socket of {owner}'s (their publisher's, "
                              f"running or ended), in a shared folder where only they may remove it; choose another "
                              f"path")
    if _listened_on(path):
        raise zmq.ZMQError(errno.EADDRINUSE)


def _ipc_path(endpoint: str) -> str:
    """The file of an ``ipc://`` endpoint; '' for other transports, a wildcard and Linux's abstract names (``@``)."""
    path = endpoint.removeprefix("ipc://")
    return "" if not endpoint.startswith("ipc://") or path in ("", "*") or path.startswith("@") else path


def _probe(path: str) -> int:
    """The error a connection to the socket at ``path`` meets (0: someone listens; ECONNREFUSED: no one does any
    more; EACCES: the socket is not this user's to write, whoever listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            return probe.connect_ex(path)
        except OSError:  # a path no socket address can hold (too long): libzmq says so
            return errno.ENAMETOOLONG


def _listened_on(path: str) -> bool:
    # a socket this user may not connect to may be another user's running publisher: never taken for a dead one
    return _probe(path) in (0, errno.EACCES, errno.EPERM)


def ipc_refusal(endpoint: str) -> str:
    """Why this user cannot connect to an ``ipc://`` endpoint's socket: another user's that it may not write (libzmq
    retries such a connection in silence forever); '' where it may, or where nothing is there yet."""
    path = _ipc_path(endpoint)
    if not path or _probe(path) not in (errno.EACCES, errno.EPERM):
        return ""
    try:
        info = os.stat(path)
    except OSError:  # a folder on the way this user may not enter
        return f"permission denied on the way to {path}"
    return (f"permission denied: the socket belongs to {user_name(info.st_uid)} (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); another user connects only where its publisher made it writable")


def _allow_only(ctx: zmq.Context, folder: str) -> ThreadAuthenticator:
    """A running ZAP handler in ``ctx`` that lets in the CURVE clients whose public keys are in ``folder``."""
    if not Path(folder).is_dir():
        what = "not found" if not Path(folder).exists() else "not a folder"
        raise FileNotFoundError(f"publish.curve_clients_dir {folder} {what} (a folder of the consumers' public .key "
                                f"files, made by zmq.auth.create_certificates)")
    try:
        keys = zmq.auth.load_certificates(folder)
    except (OSError, ValueError) as exc:  # a .key file without a public key in it
        raise ValueError(f"publish.curve_clients_dir {folder}: {exc}") from None
    if not keys:
        raise ValueError(f"publish.curve_clients_dir {folder} holds no consumer's public key (.key files)")
    auth = ThreadAuthenticator(ctx, log=log)
    auth.start()
    auth.configure_curve(domain="*", location=folder)
    log.info("publish: %d consumers' keys let in (%s)", len(keys), folder)
    return auth


def _load_secret(path: str) -> bytes:
    if not Path(path).is_file():
        what = "not found" if not Path(path).exists() else "not a file (a folder, a pipe or a device)"
        raise FileNotFoundError(f"publish.curve_secret_file {path} {what} (make one with "
                                f"zmq.auth.create_certificates)")
    _, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"publish.curve_secret_file {path} holds no secret key (use the .key_secret file)")
    return secret
