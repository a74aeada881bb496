"""A TCP proxy on loopback that stands between daemons and one etcd member and misbehaves on request
(docs/DEVELOPING.md, fault injection): ``delay`` every answer, ``blackhole`` (accept, swallow, never answer), or
``reject`` new connections. It is a real socket in the path of the real etcd client: nothing is mocked.

    proxy = FaultProxy(member.client_port).start()     # daemons use proxy.endpoint
    proxy.delay = 1.5                                   # every chunk etcd sends is held 1.5 s
    proxy.mode = "blackhole"; proxy.mode = "pass"
    proxy.stop()                                        # closes every connection it made
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>``. ``mode``: ``pass``, ``blackhole`` or
    ``reject``; ``delay``: seconds added to every chunk sent back to the client (order kept). Thread-safe; changes
    apply to data from then on (open connections included)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.delay = 0.0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._seq = itertools.count()

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, name="faultproxy", daemon=True).start()
        return self

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.append(s)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reject":
                client.close()
                continue
            self._track(client)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        """Copy src -> dst. Answers (etcd -> client) go through a timed queue so each chunk is delivered ``delay``
        seconds after it arrived, in order."""
        queue: list[tuple[float, int, bytes]] = []
        cond = threading.Condition()
        done = threading.Event()

        def sender() -> None:
            while True:
                with cond:
                    while not queue and not done.is_set():
                        cond.wait(0.1)
                    if not queue and done.is_set():
                        return
                    due, _, data = queue[0]
                    now = time.monotonic()
                    if due > now:
                        cond.wait(due - now)
                        continue
                    heapq.heappop(queue)
                try:
                    dst.sendall(data)
                except OSError:
                    return

        sending = threading.Thread(target=sender, daemon=True)
        if answers:
            sending.start()
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue
                if answers:
                    with cond:
                        heapq.heappush(queue, (time.monotonic() + self.delay, next(self._seq), data))
                        cond.notify()
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            done.set()
            if answers:
                sending.join(self.delay + 1)  # what etcd already said still arrives, late
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        """Close every connection made so far (clients see a reset; new connections follow ``mode``)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self.cut()
