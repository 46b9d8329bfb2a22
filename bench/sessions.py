#!/usr/bin/env python3
"""Measure how long a sealgate binary takes to accept one message from each of N concurrent
SMTP sessions (smtplib, one thread per session, all released together).

Usage: bench/sessions.py BINARY [SESSIONS] [RUNS]

Everything runs on loopback in a temporary folder: the gateway listens on a free port, and
the recipient domain has a static route to smtp-sink, so deliveries go nowhere else. The
time is from the release of the sessions to the last 250 reply to DATA, which includes one
fsync per group commit. The script prints each run and the median.
"""

import os
import re
import secrets
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_keys(keys):
    os.makedirs(keys)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", os.path.join(keys, "tls.key"),
         "-out", os.path.join(keys, "tls.crt")],
        check=True, capture_output=True)
    master = os.path.join(keys, "store-master-1.key")
    descriptor = os.open(master, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32) + "\n")


def start_gateway(binary, folder, sink_port, sessions):
    config = os.path.join(folder, "sealgate.toml")
    with open(config, "w") as file:
        file.write(f"""[server]
hostname = "gateway.bench.example"
data_dir = "{folder}/data"
keys_dir = "{folder}/keys"

[inbound]
listen = ["127.0.0.1:0"]
max_sessions = {sessions + 10}
max_sessions_per_client = {sessions + 10}

[[delivery.routes]]
domain = "bench.example"
host = "127.0.0.1"
port = {sink_port}

[portal]
listen = "127.0.0.1:0"
""")
    log = open(os.path.join(folder, "gateway.log"), "w+")
    process = subprocess.Popen(
        [binary, "serve", "--config", config], cwd=folder, stderr=log,
        stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "info"})
    deadline = time.time() + 30
    while time.time() < deadline:
        log.seek(0)
        match = re.search(r"SMTP listener started address=127\.0\.0\.1:(\d+)", log.read())
        if match:
            return process, int(match.group(1))
        time.sleep(0.1)
    process.kill()
    raise SystemExit("gateway did not start; see " + log.name)


def run_once(binary, sessions):
    folder = tempfile.mkdtemp(prefix="sealgate-bench-")
    sink_port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(["smtp-sink", *user, f"127.0.0.1:{sink_port}", "1000"])
    gateway = None
    try:
        write_keys(os.path.join(folder, "keys"))
        gateway, port = start_gateway(binary, folder, sink_port, sessions)
        barrier = threading.Barrier(sessions + 1)
        finished = []
        failures = []
        body = "Subject: bench\r\n\r\n" + ("0123456789 abcdefghij " * 3 + "\r\n") * 30

        def session(index):
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                    client.ehlo("bench.client")
                    barrier.wait()
                    client.sendmail("sender@gateway.bench.example",
                                    [f"user{index}@bench.example"], body)
                    finished.append(time.monotonic())
            except Exception as error:  # noqa: BLE001 - reported below
                failures.append(repr(error))
                barrier.abort()

        threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.monotonic()
        for thread in threads:
            thread.join()
        if failures:
            raise SystemExit(f"{len(failures)} sessions failed, first: {failures[0]}")
        return max(finished) - start
    finally:
        if gateway:
            gateway.kill()
            gateway.wait()
        sink.kill()
        sink.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main():
    binary = sys.argv[1]
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    times = []
    for run in range(runs):
        seconds = run_once(binary, sessions)
        times.append(seconds)
        print(f"run {run + 1}: {sessions} messages in {seconds:.3f} s")
    print(f"median: {statistics.median(times):.3f} s "
          f"({sessions / statistics.median(times):.0f} messages/s)")


if __name__ == "__main__":
    main()
