"""A loopback proxy between one Kafka client and the broker that can be cut (a partition of that client alone).

A Kafka client only bootstraps through the address it is given: it then connects to the addresses the
broker advertises in Metadata and FindCoordinator responses. So this proxy reads the protocol's frames
(``int32 size`` + body), remembers each request's API key and version by correlation id, and rewrites
the broker address in those two responses to its own — every connection of that client goes through
it. ``cut()`` stops forwarding both ways while the connections stay open (no reset: a dead switch);
new connections are accepted and get no answer. ``heal()`` lets the waiting bytes through.

It understands the versions aiokafka uses (Metadata v0-v5, FindCoordinator v0-v1: not flexible); other
responses pass unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiokafka.protocol import coordination, metadata
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

_RESPONSES: dict[tuple[int, int], Any] = {
    (cls.API_KEY, cls.API_VERSION): cls
    for module in (metadata, coordination) for name, cls in vars(module).items()
    if name.startswith(("MetadataResponse_v", "FindCoordinatorResponse_v"))
}


class KafkaProxy:
    """Forwards ``127.0.0.1:port`` to the broker, advertising itself; use :func:`kafka_proxy`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections = 0
        self.rewritten = 0
        self._open = anyio.Event()
        self._open.set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        if self._open.is_set():
            self._open = anyio.Event()

    def heal(self) -> None:
        self._open.set()

    async def handle(self, client: ByteStream) -> None:
        self.connections += 1
        try:
            server = await anyio.connect_tcp(*self.upstream)
        except OSError:
            await client.aclose()
            return
        pending: dict[int, tuple[int, int]] = {}
        async with anyio.create_task_group() as pumps:
            pumps.start_soon(self._pump, client, server, pending, True)
            pumps.start_soon(self._pump, server, client, pending, False)

    async def _pump(self, src: ByteStream, dst: ByteStream, pending: dict[int, tuple[int, int]],
                    requests: bool) -> None:
        reader = BufferedByteReceiveStream(src)
        try:
            while True:
                await self._open.wait()
                size = await reader.receive_exactly(4)
                body = await reader.receive_exactly(struct.unpack(">i", size)[0])
                await self._open.wait()
                if requests:
                    api_key, version, correlation = struct.unpack(">hhi", body[:8])
                    pending[correlation] = (api_key, version)
                else:
                    body = self._rewrite(body, pending.pop(struct.unpack(">i", body[:4])[0], (-1, -1)))
                await dst.send(struct.pack(">i", len(body)) + body)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            pass
        finally:
            await dst.aclose()

    def _rewrite(self, body: bytes, api: tuple[int, int]) -> bytes:
        cls = _RESPONSES.get(api)
        if cls is None:
            return body
        response = cls.decode(body[4:])
        if api[0] == 3:  # Metadata: brokers are (node_id, host, port[, rack])
            response.brokers = [(b[0], "127.0.0.1", self.port, *b[3:]) for b in response.brokers]
        else:  # FindCoordinator
            response.host, response.port = "127.0.0.1", self.port
        self.rewritten += 1
        return body[:4] + bytes(response.encode())


@asynccontextmanager
async def kafka_proxy(bootstrap: str) -> AsyncIterator[KafkaProxy]:
    """Serve a :class:`KafkaProxy` to the broker at ``bootstrap`` on a free loopback port until the block ends."""
    host, port = bootstrap.rsplit(":", 1)
    proxy = KafkaProxy((host, int(port)))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            async with listener:
                await listener.serve(proxy.handle)

        tg.start_soon(serve)
        try:
            yield proxy
        finally:
            proxy.heal()
            tg.cancel_scope.cancel()
