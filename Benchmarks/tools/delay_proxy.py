#!/usr/bin/env python3
"""A TCP delay line for benchmarks: forwards LISTEN → TARGET adding DELAY seconds each way
(RTT = 2 × DELAY) without limiting bandwidth: bytes are read as they come, stamped, and
written once their time has come, so many round trips' worth of data is in flight at once.
Stands in for a WAN link where netem is not available. Usage:
    delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_SECONDS
"""
import asyncio
import sys
import time


async def pipe(reader, writer, delay):
    queue: asyncio.Queue = asyncio.Queue()

    async def pump_in():
        while True:
            data = await reader.read(1 << 20)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def pump_out():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof() if writer.can_write_eof() else None
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(pump_in(), pump_out())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    listen_port, target_port, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer, delay),
                             pipe(upstream_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print(f"delay proxy listening on 127.0.0.1:{listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
