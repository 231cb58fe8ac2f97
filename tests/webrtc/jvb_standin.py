#!/usr/bin/env python3
"""A videobridge stand-in for the browser test: one WebRTC answerer (aiortc) on one UDP
socket, PRIVATE_IP:10000, that advertises PUBLIC_IP:10000 and PRIVATE_IP:10000 as host
candidates, as jvb does with JVB_ADVERTISE_IPS (a static NAT mapping) and
advertise-private-candidates (jvb/rootfs/defaults/jvb.conf, docker-jitsi-meet stable-11146-2).

The page and the signalling are served on 127.0.0.1:HTTP_PORT of the namespace it is started
in (the browser's); everything else runs in the videobridge container's (MEDIA_NETNS).
On the data channel it greets the browser and answers every `ping` with `pong`. It prints
`READY` once listening and one `RESULT <json>` line at the end (the pair aiortc nominated, so
the test sees which address the browser reached it from), then exits 0 if messages went both
ways and the browser confirmed, else 1.

Pinned: aiortc 1.16.0, aioice 0.13.0 (the fixed port replaces aioice's candidate gathering,
which binds port 0 and has no option for a fixed port).
"""
import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import os
import socket
import sys
import time

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

PUBLIC_IP = os.environ["PUBLIC_IP"]
PRIVATE_IP = os.environ["PRIVATE_IP"]
PORT = 10000
HTTP_PORT = int(os.environ["HTTP_PORT"])
TURN_SECRET = os.environ["TURN_SECRET"]
TURN_URL = os.environ["TURN_URL"]
TIMEOUT = float(os.environ.get("TIMEOUT", "40"))
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
CLONE_NEWNET = 0x40000000


def enter(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {path}")
    os.close(fd)


async def candidates(self, component, addresses, timeout=5):
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(self), local_addr=(PRIVATE_IP, PORT))
    prio = candidate_priority(component, "host")
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", PRIVATE_IP), component=component,
        transport="udp", priority=prio, host=PRIVATE_IP, port=PORT, type="host")
    self._protocols.append(protocol)
    public = Candidate(
        foundation=candidate_foundation("host", "udp", PUBLIC_IP), component=component,
        transport="udp", priority=prio + 1, host=PUBLIC_IP, port=PORT, type="host")
    return [public, protocol.local_candidate]


aioice.ice.Connection.get_component_candidates = candidates

state = {"got": [], "sent": [], "browser": None, "pair": None}
done = asyncio.Event()
pcs = []


async def page(_):
    return web.FileResponse(PAGE)


async def config(_):
    # coturn's REST-API credentials (use-auth-secret), as prosody hands them out.
    username = f"{int(time.time()) + 3600}:participant"
    mac = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return web.json_response({"url": TURN_URL, "username": username,
                              "credential": base64.b64encode(mac).decode()})


async def offer(request):
    params = await request.json()
    pc = RTCPeerConnection()
    pcs.append(pc)

    @pc.on("datachannel")
    def on_channel(ch):
        ch.send("hello from the bridge")
        state["sent"].append("hello from the bridge")

        @ch.on("message")
        def on_message(m):
            state["got"].append(m)
            if isinstance(m, str) and m.startswith("ping"):
                ch.send("pong " + m)
                state["sent"].append("pong " + m)
            conn = pc.sctp.transport.transport._connection
            for pair in conn._nominated.values():
                state["pair"] = {"local": list(pair.local_addr), "remote": list(pair.remote_addr)}

    await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


async def result(request):
    state["browser"] = await request.json()
    done.set()
    return web.json_response({"ok": True})


async def main(listener):
    app = web.Application()
    app.add_routes([web.get("/", page), web.get("/config", config),
                    web.post("/offer", offer), web.post("/result", result)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    print("READY", flush=True)
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.2)
    b = state["browser"] or {}
    ok = bool(b.get("ok")) and any(str(m).startswith("ping") for m in state["got"])
    print("RESULT " + json.dumps({"ok": ok, "got": state["got"], "sent": state["sent"],
                                  "pair": state["pair"], "browser": b}), flush=True)
    for pc in pcs:
        await pc.close()
    await runner.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", HTTP_PORT))
    sock.listen(16)
    enter(os.environ["MEDIA_NETNS"])
    sys.exit(asyncio.run(main(sock)))
