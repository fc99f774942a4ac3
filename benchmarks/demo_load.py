"""A bounded load test of the demo on 127.0.0.1: `fsl demo` in its own process, 8 clients in
threads (each its own session: load the example categories, then predict photos in a loop) until
400 predictions or 60 s. Prints throughput, latency percentiles, the server's RSS growth and the
errors, next to one idle prediction through the same client path; MISSED beside a target not met.

    python benchmarks/demo_load.py [--data DIR] [--clients 8] [--requests 400] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsl.data.prepared import load_catalog

TAUGHT = "taught categories"
P50_TARGET = 3.0  # p50 under load at most 3x one idle prediction


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_demo(data: str | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "fsl.cli", "demo", "--port", str(port)] + (["--data", data] if data else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the demo did not start:\n{server.stderr.read()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the demo did not open its port within 180 s")


class Session:
    """One browser tab: the protocol the page speaks (upload, join the queue, read the event stream)
    over one kept-alive connection. gradio_client does the same with a new connection and a polling
    thread per call, which on a 2-core machine costs as much CPU as the server it measures."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        self.session_hash = uuid.uuid4().hex[:11]
        dependencies = self.http.get("config").json()["dependencies"]
        self.fn = {d["api_name"]: d["id"] for d in dependencies if d.get("api_name")}
        self.call("load_examples", [None])

    def call(self, api_name: str, data: list) -> list:
        joined = self.http.post(
            "gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": self.fn[api_name],
                "session_hash": self.session_hash,
                "event_data": None,
                "trigger_id": None,
            },
        )
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session_hash}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message["msg"] == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{api_name} failed: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream closed without an answer")

    def predict(self, photo: Path) -> float:
        started = time.perf_counter()
        with open(photo, "rb") as f:
            uploaded = self.http.post("gradio_api/upload", files={"files": (photo.name, f, "image/jpeg")})
        uploaded.raise_for_status()
        image = {"path": uploaded.json()[0], "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
        _, _, status, _ = self.call("predict", [None, image, "", TAUGHT])
        if "Best guess" not in str(status) and "None of these" not in str(status):
            raise RuntimeError(f"unexpected answer: {status!r}")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    catalog = load_catalog(args.data)
    photos = catalog.image_paths[:: max(1, len(catalog) // 200)][:200]
    port = free_port()
    server = start_demo(args.data, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        idle_client = Session(url)
        for photo in photos[:3]:
            idle_client.predict(photo)  # warm-up
        idle = float(np.median([idle_client.predict(photo) for photo in photos[3:23]]))

        clients = [Session(url) for _ in range(args.clients)]
        rss_before = rss_mib(server.pid)
        latencies: list[float] = []
        errors: list[str] = []
        sent = [0]
        lock = threading.Lock()
        stop_at = time.perf_counter() + args.seconds

        def worker(index: int) -> None:
            turn = index
            while time.perf_counter() < stop_at:
                with lock:
                    if sent[0] >= args.requests:
                        return
                    sent[0] += 1
                try:
                    seconds = clients[index].predict(photos[turn % len(photos)])
                    with lock:
                        latencies.append(seconds)
                except Exception as error:  # counted and shown, never hidden
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                turn += args.clients

        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
        rss_after = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3
    ratio = p50 / idle
    print(
        f"demo load test: {args.clients} clients on 127.0.0.1, {len(latencies) + len(errors)} predictions "
        f"in {wall:.1f} s (limits: {args.requests} requests or {args.seconds:.0f} s)"
    )
    print(f"| {'measure':<32} | {'value':>12} |")
    print(f"|{'-' * 34}|{'-' * 14}|")
    for name, value in [
        ("one idle prediction (median)", f"{1000 * idle:.0f} ms"),
        ("throughput", f"{len(latencies) / wall:.1f} req/s"),
        ("p50 under load", f"{1000 * p50:.0f} ms"),
        ("p95 under load", f"{1000 * p95:.0f} ms"),
        ("p99 under load", f"{1000 * p99:.0f} ms"),
        ("p50 / idle (target <= 3.0)", f"{ratio:.2f}" + ("" if ratio <= P50_TARGET else " MISSED")),
        ("server CPU per prediction", f"{1000 * server_cpu / max(1, len(latencies)):.0f} ms"),
        ("client CPU per prediction", f"{1000 * client_cpu / max(1, len(latencies)):.0f} ms"),
        ("server RSS before -> after", f"{rss_before:.0f} -> {rss_after:.0f} MiB"),
        ("errors (target 0)", f"{len(errors)}" + ("" if not errors else " MISSED")),
    ]:
        print(f"| {name:<32} | {value:>12} |")
    for error in errors[:5]:
        print(f"  error: {error}")


if __name__ == "__main__":
    main()
