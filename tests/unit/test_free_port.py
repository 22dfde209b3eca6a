"""free_port never hands out the same port twice in one process, even when the kernel offers it again."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from service.triton import runtime


class RepeatingSocket:
    """A socket whose ephemeral port comes from a fixed sequence, as a kernel that reuses a closed port."""

    ports: ClassVar[list[int]] = []

    def __init__(self, *args: Any) -> None:
        self.port = RepeatingSocket.ports.pop(0)

    def __enter__(self) -> RepeatingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_offered_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_handed_out", set())
    monkeypatch.setattr(runtime.socket, "socket", RepeatingSocket)
    RepeatingSocket.ports = [40001, 40001, 40001, 40002, 40001, 40002, 40003]
    assert [runtime.free_port(), runtime.free_port(), runtime.free_port()] == [40001, 40002, 40003]


def test_free_ports_are_real_and_distinct() -> None:
    ports = [runtime.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out, and still free now
