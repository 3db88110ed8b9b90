"""Long polls for :mod:`pyflannel.httpc`: requests whose answer may rightly take hours.

etcd's v2 watch (``GET ...?wait=true``) answers once something changes. Its head
comes at once (etcd sends it as soon as the watch is registered), so a long poll has
two deadlines: the usual one for connecting and for the head, which tells a dead or
stuck server quickly, and a long one for the body. When the long one runs out the
server simply had nothing to say: that is an answer without a body, not a failure,
and the caller asks again. A whole answer leaves its connection in the pool like any
other call's, so a burst of changes does not cost a new connection each.
"""

from __future__ import annotations

import asyncio
import dataclasses

from pyflannel.errors import RegistryUnavailable
from pyflannel.httpc.client import Headers, Origin
from pyflannel.httpc.connection import Connection
from pyflannel.httpc.wire import Head, ProtocolError


@dataclasses.dataclass(frozen=True, slots=True)
class Polled:
    """The answer to a long poll: its head, and its body unless the wait ran out first."""

    head: Head
    body: bytes | None


class PollingOrigin(Origin):
    """An :class:`~pyflannel.httpc.client.Origin` that can long-poll as well."""

    async def long_poll(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Headers = (),
        *,
        timeout: float,
        wait: float,
    ) -> Polled:
        """Send one request; connect and read the answer's head within ``timeout``
        seconds, then its body within ``wait`` more (see the module docstring)."""
        request = self._encode(method, target, body, headers)
        try:
            async with asyncio.timeout(timeout):
                conn, head = await self._head_of(request)
        except TimeoutError:
            raise RegistryUnavailable(f"{self.name} did not answer within {timeout:g} s") from None
        try:
            async with asyncio.timeout(wait):
                data = await conn.body()
        except TimeoutError:
            self._discard(conn)  # the answer is still due: no other request can follow
            return Polled(head, None)
        except (OSError, ProtocolError) as exc:
            self._discard(conn)
            raise self._unavailable(exc) from exc
        except BaseException:
            self._discard(conn)
            raise
        self._checkin(conn)
        return Polled(head, data)

    async def _head_of(self, request: bytes) -> tuple[Connection, Head]:
        """Write ``request`` and read its answer's head; sent once more on a fresh
        connection if a reused one turns out to have been closed while idle."""
        conn, reused = await self._checkout()
        while True:
            try:
                conn.write(request)
                return conn, await conn.head()
            except (OSError, ProtocolError) as exc:
                self._discard(conn)
                if not (reused and conn.received == 0):
                    raise self._unavailable(exc) from exc
                conn, reused = await self._connect_mapped(), False
            except BaseException:
                self._discard(conn)
                raise
