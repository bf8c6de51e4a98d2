"""Fan-out benchmark: N sockets in one channel; Enginel (JSON, msgpack) vs python-socketio and Node Socket.IO.

Usage: .venv/bin/python bench/fanout.py [--sockets 1000] [--seconds 5] [--window 8] [--only enginel-json,...]

Each server runs in its own process; this process is the load generator for all of them, with one
minimal WebSocket client (raw asyncio, no per-message decoding) so every server is measured by the same
client. A publisher socket asks the server to broadcast an event (~150 bytes) to the channel; every
subscriber counts it. Two phases per server:
  saturated: up to --window events in flight (published, not yet received by every socket): deliveries/s
             and publish-to-receive latency under load;
  paced:     one event at a time: latency of a single fan-out to all sockets (first to last socket).
Node's `socket.io` is installed into bench/.work/ (git-ignored) on first use; python-socketio and aiohttp
into the current interpreter. Not a test: it prints figures, ratios and each side's CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
CHANNEL = "design:bench"  # not a presence channel: joins must not flood the subscribers
ROOM = "bench"
PAD = "x" * 100

NODE_SERVER = r"""
const { Server } = require("socket.io");
const port = Number(process.argv[2]);
const io = new Server(port, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => { socket.join(room); if (ack) ack("ok"); });
  socket.on("publish", (data) => { io.to("bench").emit("ev", data); });
});
console.log("ready");
"""


# --------------------------------------------------------------------------------------------- servers
def serve_enginel(port: int, redis_url: str | None) -> None:
    """An Enginel realtime gateway on `port` (in-process or Redis broker) for the load client, until stopped."""
    sys.path.insert(0, str(REPO))
    from types import SimpleNamespace

    import tornado.httpserver
    import tornado.web

    from handlers import websocket
    from realtime import Broker, Gateway, InProcessBroker, RealtimeConfig
    from realtime.redis_broker import RedisBroker

    @dataclass
    class User:
        id: int
        username: str

    async def authenticate(credential: Any) -> User:
        return User(1, "bench")

    async def authorize(principal: Any, channel: str) -> None:
        return None

    async def main() -> None:
        gateway: Gateway

        async def publish(principal: Any, payload: dict[str, Any]) -> dict[str, Any]:
            epoch, offset = await gateway.publish(CHANNEL, "bench", payload["data"])
            return {"offset": offset}

        broker: Broker = RedisBroker(redis_url, prefix="bench") if redis_url else InProcessBroker()
        gateway = Gateway(
            broker,
            authenticate=authenticate,
            authorize=authorize,
            commands={"bench.publish": publish},
            config=RealtimeConfig(
                commands_per_second=1e9, command_burst=10**9, max_pending_bytes=64 * 1024 * 1024, ping_interval=0
            ),
        )
        await gateway.start()
        app = tornado.web.Application(websocket.routes, services=SimpleNamespace(realtime=gateway))
        server = tornado.httpserver.HTTPServer(app)
        server.listen(port, "127.0.0.1", backlog=2048)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_python_socketio(port: int) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=1_000_000,
    )

    @sio.on("join")
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.on("publish")
    async def publish(sid: str, data: Any) -> None:
        await sio.emit("ev", data, room=ROOM)

    app = web.Application()
    sio.attach(app)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, backlog=2048)


# ---------------------------------------------------------------------------------------------- client
@dataclass
class Run:
    """Shared state of one measurement: publish times by sequence number and per-delivery latencies."""

    sockets: int
    sent_at: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    recording: bool = False
    completed: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def delivered(self, seq: int) -> None:
        now = time.perf_counter()
        if self.recording:
            self.latencies.append(now - self.sent_at[seq])
        received = self.received
        received[seq] += 1
        if received[seq] == self.sockets:
            while self.completed < len(received) and received[self.completed] >= self.sockets:
                self.completed += 1
            self.progress.set()


def masked(payload: bytes, opcode: int) -> bytes:
    # A zero masking key keeps the payload as is: valid framing without spending client CPU on XOR.
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Conn(asyncio.Protocol):
    """A minimal WebSocket client: handshake, frame parsing, pongs; counts event frames in order."""

    def __init__(self, kind: str, path: str, port: int, headers: str, run: Run) -> None:
        self.kind = kind  # "json" | "msgpack" | "sio"
        self.path = path
        self.port = port
        self.headers = headers
        self.run = run
        self.buf = bytearray()
        self.open = False
        self.counting = False
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self.control: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"  # type: ignore[union-attr]
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"{self.headers}\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during handshake"))
        self.control.put_nowait((8, b""))

    def send(self, payload: bytes, opcode: int) -> None:
        assert self.transport is not None
        self.transport.write(masked(payload, opcode))

    def data_received(self, data: bytes) -> None:
        """Split the bytes read into WebSocket frames and record each event's delivery latency."""
        buf = self.buf
        buf += data
        pos = 0
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            pos = end + 4
            self.open = True
            if b" 101 " not in status:
                self.handshake.set_exception(ConnectionError(status.decode()))
                return
            self.handshake.set_result(None)
        n = len(buf)
        while n - pos >= 2:
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + size
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 9:  # ping -> pong
                self.send(bytes(buf[pos + head : end]), 0xA)
            elif (
                self.counting
                and opcode in (1, 2)
                and (self.kind != "sio" or buf[pos + head] == 0x34 and buf[pos + head + 1] == 0x32)
            ):  # "42"
                self.run.delivered(self.count)
                self.count += 1
            elif self.kind == "sio" and opcode == 1 and size == 1 and buf[pos + head] == 0x32:  # "2" -> "3"
                self.send(b"3", 1)
            else:
                self.control.put_nowait((opcode, bytes(buf[pos + head : end])))
            pos = end
        if pos:
            del buf[:pos]

    async def next_control(self, timeout: float = 30.0) -> tuple[int, bytes]:
        return await asyncio.wait_for(self.control.get(), timeout)


class Target:
    """How to talk to one server implementation."""

    name: str
    kind: str
    path = "/ws/"
    headers = ""

    def start(self, port: int) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    async def join(self, conn: Conn) -> None:
        raise NotImplementedError

    def publish(self, conn: Conn, seq: int, pub_id: int) -> None:
        raise NotImplementedError


class EnginelTarget(Target):
    def __init__(self, codec: str, redis_url: str | None = None) -> None:
        self.kind = codec
        self.redis_url = redis_url
        self.name = f"enginel {codec}" + (" redis" if redis_url else "")
        self.headers = f"Authorization: Token bench\r\nSec-WebSocket-Protocol: enginel.v1.{codec}\r\n"

    def start(self, port: int) -> subprocess.Popen[bytes]:
        extra = ["--redis", self.redis_url] if self.redis_url else []
        return subprocess.Popen(
            [sys.executable, __file__, "--serve", "enginel", "--port", str(port), *extra], stdout=subprocess.PIPE
        )

    def encode(self, value: dict[str, Any]) -> tuple[bytes, int]:
        if self.kind == "msgpack":
            import msgpack

            return msgpack.packb(value), 2
        return json.dumps(value).encode(), 1

    def decode(self, payload: bytes) -> Any:
        if self.kind == "msgpack":
            import msgpack

            return msgpack.unpackb(payload)
        return json.loads(payload)

    async def join(self, conn: Conn) -> None:
        welcome = self.decode((await conn.next_control())[1])
        assert welcome["type"] == "welcome", welcome
        conn.send(*self.encode({"type": "subscribe", "id": 1, "channel": CHANNEL}))
        reply = self.decode((await conn.next_control())[1])
        assert reply["type"] == "result", reply

    def publish(self, conn: Conn, seq: int, pub_id: int) -> None:
        conn.send(*self.encode({"type": "bench.publish", "id": pub_id + 2, "data": {"seq": seq, "pad": PAD}}))


class SocketIOTarget(Target):
    kind = "sio"
    path = "/socket.io/?EIO=4&transport=websocket"

    async def join(self, conn: Conn) -> None:
        opcode, payload = await conn.next_control()
        assert payload.startswith(b"0{"), payload  # engine.io open
        conn.send(b"40", 1)  # connect to namespace "/"
        opcode, payload = await conn.next_control()
        assert payload.startswith(b"40"), payload
        conn.send(b'420["join","bench"]', 1)  # join with ack id 0
        opcode, payload = await conn.next_control()
        assert payload.startswith(b"430"), payload

    def publish(self, conn: Conn, seq: int, pub_id: int) -> None:
        conn.send(b'42["publish",' + json.dumps({"seq": seq, "pad": PAD}).encode() + b"]", 1)


class PythonSocketIOTarget(SocketIOTarget):
    name = "python-socketio"

    def start(self, port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, __file__, "--serve", "python-socketio", "--port", str(port)], stdout=subprocess.PIPE
        )


class NodeSocketIOTarget(SocketIOTarget):
    name = "node socket.io"

    def start(self, port: int) -> subprocess.Popen[bytes]:
        script = WORK / "sio_server.js"
        script.write_text(NODE_SERVER)
        return subprocess.Popen(["node", str(script), str(port)], cwd=WORK, stdout=subprocess.PIPE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if b"ready" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("server port never opened")


async def measure(target: Target, sockets: int, seconds: float, window: int) -> dict[str, Any]:
    """Load one target: `sockets` subscribers of one channel, `window` events in flight; time every delivery."""
    port = free_port()
    proc = target.start(port)
    loop = asyncio.get_running_loop()
    try:
        await wait_ready(proc, port)
        run = Run(sockets)

        async def connect() -> Conn:
            _, conn = await loop.create_connection(
                lambda: Conn(target.kind, target.path, port, target.headers, run), "127.0.0.1", port
            )
            await asyncio.wait_for(conn.handshake, 30)
            await target.join(conn)
            return conn

        started = time.perf_counter()
        gate = asyncio.Semaphore(50)

        async def gated() -> Conn:
            async with gate:
                return await connect()

        conns = await asyncio.gather(*(gated() for _ in range(sockets)))
        publisher = await connect()
        publisher.counting = False
        connect_time = time.perf_counter() - started
        for conn in conns:
            conn.counting = True

        seq = 0

        async def phase(duration: float, in_flight: int, record: bool, max_events: int) -> tuple[int, float]:
            nonlocal seq
            first = seq
            run.recording = record
            began = time.perf_counter()
            deadline = began + duration
            while time.perf_counter() < deadline and seq - first < max_events:
                while seq - run.completed < in_flight and seq - first < max_events:
                    run.sent_at.append(time.perf_counter())
                    run.received.append(0)
                    target.publish(publisher, seq, seq)
                    seq += 1
                run.progress.clear()
                await asyncio.wait_for(run.progress.wait(), 60)
            while run.completed < seq:
                run.progress.clear()
                await asyncio.wait_for(run.progress.wait(), 60)
            run.recording = False
            return seq - first, time.perf_counter() - began

        await phase(1.0, window, False, 20)  # warm-up
        server_cpu, client_cpu = cpu_seconds(proc.pid), own_cpu()
        events, elapsed = await phase(seconds, window, True, 10**9)
        server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu, own_cpu() - client_cpu
        saturated = list(run.latencies)
        run.latencies.clear()
        paced_events, paced_elapsed = await phase(seconds / 2, 1, True, 10**9)
        paced = list(run.latencies)
        for conn in [*conns, publisher]:
            if conn.transport is not None:
                conn.transport.close()
        return {
            "name": target.name,
            "events": events,
            "deliveries": events * sockets,
            "rate": events * sockets / elapsed,
            "p50": percentile(saturated, 0.5) * 1000,
            "p99": percentile(saturated, 0.99) * 1000,
            "paced_rate": paced_events * sockets / paced_elapsed,
            "paced_p50": percentile(paced, 0.5) * 1000,
            "paced_p99": percentile(paced, 0.99) * 1000,
            "server_cpu": server_cpu / elapsed * 100,
            "client_cpu": client_cpu / elapsed * 100,
            "connect": connect_time,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def ensure_node() -> bool:
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("node/npm not found: skipping Node Socket.IO")
        return False
    if not (WORK / "node_modules" / "socket.io").is_dir():
        WORK.mkdir(exist_ok=True)
        (WORK / "package.json").write_text('{"name": "enginel-bench", "private": true}\n')
        print("installing socket.io into bench/.work/ ...", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "socket.io@4"],
            cwd=WORK,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return True


def ensure_python_socketio() -> bool:
    try:
        import aiohttp  # noqa: F401
        import socketio  # noqa: F401
    except ImportError:
        print("installing python-socketio and aiohttp ...", flush=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "python-socketio", "aiohttp"])
        if result.returncode != 0:
            print("could not install python-socketio: skipping it")
            return False
    return True


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_redis() -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """A throwaway redis-server for the "enginel json redis" row (the multi-process backplane), if installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found: skipping the Redis-backed row")
        return None, None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, None


async def main(args: argparse.Namespace) -> None:
    """Run every server under the same load, print each one's figures and the ratios."""
    targets: list[Target] = [EnginelTarget("json"), EnginelTarget("msgpack")]
    redis_proc, redis_url = start_redis() if not args.only or "redis" in args.only else (None, None)
    if redis_url:
        targets.append(EnginelTarget("json", redis_url))
    wanted = set(args.only.split(",")) if args.only else None
    if (wanted is None or "python-socketio" in wanted) and ensure_python_socketio():
        targets.append(PythonSocketIOTarget())
    if (wanted is None or "node" in wanted) and ensure_node():
        targets.append(NodeSocketIOTarget())
    if wanted is not None:
        names = {
            "enginel json": "enginel-json",
            "enginel msgpack": "enginel-msgpack",
            "node socket.io": "node",
            "python-socketio": "python-socketio",
            "enginel json redis": "redis",
        }
        targets = [t for t in targets if names[t.name] in wanted]
    print(
        f"fan-out to {args.sockets} sockets in one channel, {args.seconds:g} s saturated (window "
        f"{args.window}) + paced, {os.cpu_count()} cores; client and server are separate processes",
        flush=True,
    )
    results = []
    try:
        for target in targets:
            results.append(await measure(target, args.sockets, args.seconds, args.window))
            r = results[-1]
            print(
                f"  {r['name']:<18} saturated {r['rate']:>9,.0f}/s p50 {r['p50']:6.1f} p99 {r['p99']:6.1f} ms | "
                f"one at a time {r['paced_rate']:>8,.0f}/s p50 {r['paced_p50']:5.1f} p99 {r['paced_p99']:5.1f} "
                f"ms | cpu server {r['server_cpu']:3.0f}% client {r['client_cpu']:3.0f}%",
                flush=True,
            )
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
    reference = next((r for r in results if r["name"] == "enginel json"), None)
    print()
    print(f"{'':<18} {'saturated (window ' + str(args.window) + ')':^34} {'one event at a time':^34}")
    print(
        f"{'server':<18} {'deliveries/s':>13} {'p50 ms':>9} {'p99 ms':>9}  {'deliveries/s':>13} {'p50 ms':>9} "
        f"{'p99 ms':>9}  {'enginel json is':>16}"
    )
    for r in results:
        ratio = (
            f"{reference['rate'] / r['rate']:.2f}x / {reference['paced_rate'] / r['paced_rate']:.2f}x"
            if reference
            else "-"
        )
        print(
            f"{r['name']:<18} {r['rate']:>13,.0f} {r['p50']:>9.1f} {r['p99']:>9.1f}  {r['paced_rate']:>13,.0f} "
            f"{r['paced_p50']:>9.1f} {r['paced_p99']:>9.1f}  {ratio:>16}"
        )
    if any(r["client_cpu"] > 90 for r in results):
        print("note: the load generator used nearly a full core in some runs; those figures are partly client-bound")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=8, help="events in flight in the saturated phase")
    parser.add_argument("--only", help="comma-separated: enginel-json,enginel-msgpack,redis,python-socketio,node")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    raise_fd_limit()
    if arguments.serve == "enginel":
        serve_enginel(arguments.port, arguments.redis)
    elif arguments.serve == "python-socketio":
        serve_python_socketio(arguments.port)
    else:
        asyncio.run(main(arguments))
