#!/usr/bin/env python3
"""A round-robin TCP balancer for the script tests (socat is not everywhere):

    tests/support/balancer.py PORT HOST:PORT HOST:PORT...

Listens on 127.0.0.1:PORT (0: a free port) and prints the port it listens on
as its first line, once it listens. Each new connection goes to the next
backend in turn; bytes are copied both ways, each side's end passed on. A
backend that cannot be reached closes the client's connection. Runs until
killed (tests/support/lib.sh's start_bg and stop_all); the same as Balancer in
tests/it/support/balancer.rs.
"""
import asyncio
import itertools
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        # The sender finished: pass its end on (half-close), as TCP would.
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def main():
    port = int(sys.argv[1])
    backends = itertools.cycle(
        (host, int(p)) for host, p in (b.rsplit(":", 1) for b in sys.argv[2:])
    )

    async def relay(client_reader, client_writer):
        host, backend_port = next(backends)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, backend_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer)
        )
        for writer in (client_writer, upstream_writer):
            writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if len(sys.argv) < 3:
    sys.exit(__doc__)
asyncio.run(main())
