"""A TCP relay between the agent and the attestation server (loopback), which can kill the
server at the one moment a random kill rarely hits: when its answer leaves, after the
transaction behind it has committed. TLS passes through untouched (the server's certificate
names 127.0.0.1, whatever the port).

Armed with a condition (a look into the database: "the enrollment is stored"), the relay
checks it whenever the server sends something; once it holds, that data is the answer to the
request that committed it (the server commits before it answers). The relay then SIGKILLs
the server, drops the data and closes both connections: the client never hears the answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType


class Relay:
    """Listens on a loopback port of its own and relays each connection to ``target``."""

    def __init__(self, target: int, kill: Callable[[], None]) -> None:
        self._target = target
        self._kill = kill
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._condition: Callable[[], bool] | None = None
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    @contextlib.contextmanager
    def armed(self, condition: Callable[[], bool]) -> Iterator[threading.Event]:
        """Kill the server on the first data it sends once ``condition()`` holds; the event
        is set if that happened."""
        self.fired.clear()
        with self._lock:
            self._condition = condition
        try:
            yield self.fired
        finally:
            with self._lock:
                self._condition = None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()  # the server is down: as if nothing listened
                continue
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client, pair), daemon=True).start()

    @staticmethod
    def _close(pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._close(pair)

    def _answers(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """Server to client, unless the armed condition holds: then the answer is lost."""
        try:
            while data := source.recv(65536):
                with self._lock:
                    condition = self._condition
                    fire = condition is not None and condition()
                    if fire:
                        self._condition = None
                if fire:
                    self._kill()
                    self.fired.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        self._close(pair)
