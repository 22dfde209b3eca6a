"""Claiming a listening port before anything slow starts: a taken port fails start-up at once, in one line."""

from __future__ import annotations

import socket

from service.errors import Misconfiguration


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int, api: str) -> None:
    """A lone facade's HTTP port. uvicorn reports a taken port by sys.exit inside its task, which escapes the
    event loop and the facade's clean-up: find out first."""
    try:
        with socket.create_server((host, port), family=address_family(host)):
            pass
    except OSError as exc:
        raise Misconfiguration(f"cannot listen for {api} on {host}:{port}: {exc.strerror or exc}") from None


def hold_port(host: str, port: int, api: str) -> socket.socket:
    """The worker parent's claim on a port (see service/workers.py): bound without sharing, so any process
    already there fails it, then open to its workers' listeners (SO_REUSEPORT). Raises Misconfiguration."""
    sock = socket.socket(address_family(host), socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR for the bind only: a TIME_WAIT connection of a previous run must not block it, but no
        # other socket may bind beside this one later (the kernel checks the flag of the socket bound first).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # now the workers' listeners may join
    except OSError:
        sock.close()
        raise Misconfiguration(f"cannot listen for {api} on {host}:{port}: address in use or not available") from None
    return sock
