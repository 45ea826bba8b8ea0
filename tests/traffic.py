"""Real traffic between network namespaces, shared by the host tests and the lab suite."""

from __future__ import annotations

import socket

from nodeagent import netns


def stream_connects(client: str, server: str, ip: str, port: int, *, proto: int = 0,
                    wait: float, accept_wait: float = 5.0) -> bool:
    """A stream connection (TCP, or SCTP with ``proto``) from namespace ``client`` to
    ``ip``:``port`` in ``server`` opens within ``wait`` seconds and carries data both ways;
    False when the connection attempt fails or times out (a dropped SYN or INIT)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    srv = netns.run(server, lambda: socket.socket(family, socket.SOCK_STREAM, proto))
    cli = netns.run(client, lambda: socket.socket(family, socket.SOCK_STREAM, proto))
    with srv, cli:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((ip, port))
        srv.listen(1)
        cli.settimeout(wait)
        try:
            cli.connect((ip, port))
        except OSError:
            return False
        srv.settimeout(accept_wait)
        conn, _ = srv.accept()
        with conn:
            cli.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert cli.recv(4) == b"pong"
        return True
