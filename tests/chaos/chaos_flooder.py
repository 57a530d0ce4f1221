"""A client that floods a daemon with pings, in a process of its own so that the
well-behaved client measuring latencies does not share its event loop. It keeps
``PIPELINE`` pings in flight until its stdin closes, then prints how many were
answered with a pong and how many otherwise, as JSON.

Usage: python chaos_flooder.py WS_URL TOKEN
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

PIPELINE = 200


async def main(url: str, token: str) -> None:
    answered = {"pong": 0, "other": 0}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    closed = asyncio.ensure_future(reader.read())
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.ws_connect(url) as ws:
        sys.stdout.write("flooding\n")
        sys.stdout.flush()
        frame_id = 0
        while not closed.done():
            for _ in range(PIPELINE):
                frame_id += 1
                await ws.send_str(f'{{"type":"ping","id":{frame_id}}}')
            for _ in range(PIPELINE):
                reply = await ws.receive_json()
                answered["pong" if reply["type"] == "pong" else "other"] += 1
    sys.stdout.write(json.dumps(answered) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
