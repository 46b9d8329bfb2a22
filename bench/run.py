#!/usr/bin/env python3
"""Benchmark sealgate side by side with Postfix, all on loopback.

Each scenario sends the same load (smtp-source, or this script's own client) through a
private Postfix relay and through sealgate's release build to one sink, and prints
messages per second, the ratio sealgate/Postfix and the load average beside each run.
Then it measures single-message latency, 35 MB messages per route with sealgate's peak
resident memory, `openssl speed` and the criterion micro-benchmarks (`cargo bench`).

Needs root (Postfix's master runs as root), Python 3.11 or newer, Debian's `postfix`
package (postfix, smtp-source, smtp-sink), openssl and cargo. It installs nothing.
Run from the repository: `bench/run.py`, or `bench/run.py --quick` for a short smoke run.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENDER = "bench.sender@clinic.example.org"
PLAIN_RECIPIENT = "reader@mailbox.example"
SMIME_RECIPIENT = "bob@partner.example"
PORTAL_RECIPIENT = "sam.patient@mailbox.example"
SENSITIVE_SUBJECT = "[secure] benchmark"
# How long a batch may take to reach the sink before the run counts as failed.
DRAIN_TIMEOUT = 600.0


def fail(message):
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(1)


def check_tools():
    """Exit with what to install when a required program is missing."""
    missing = []
    for program, package in [
        ("/usr/sbin/postfix", "postfix"),
        ("/usr/sbin/smtp-source", "postfix"),
        ("/usr/sbin/smtp-sink", "postfix"),
        ("openssl", "openssl"),
        ("cargo", "a Rust toolchain (1.95 or newer)"),
    ]:
        if shutil.which(program) is None:
            missing.append(f"{program} (install {package})")
    if missing:
        fail("missing: " + "; ".join(missing) + ". On Debian: apt-get install postfix openssl")
    if sys.version_info < (3, 11):
        fail(f"Python 3.11 or newer is needed, found {sys.version.split()[0]}")
    if os.geteuid() != 0:
        fail("run as root: the private Postfix instance is started with `postfix -c DIR start`")


def free_port():
    """Returns a loopback TCP port the kernel just handed out (bound to port 0, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port, timeout, what, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.recv(512)
                return
        except OSError:
            time.sleep(0.1)
    detail = f"; log {log}:\n{Path(log).read_text(errors='replace')[-3000:]}" if log else ""
    fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s{detail}")


def loadavg():
    """Returns the 1-minute load average from /proc/loadavg."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


# ---------------------------------------------------------------------------------------
# Sinks


class SmtpSink:
    """Postfix's smtp-sink on a loopback port; counts messages from its `-c` counter."""

    def __init__(self, root):
        self.port = free_port()
        self.messages = 0
        self.process = subprocess.Popen(
            ["/usr/sbin/smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=open(root / "smtp-sink.err", "wb"),
        )
        threading.Thread(target=self._read_counter, daemon=True).start()
        wait_listening(self.port, 10, "smtp-sink")
        self.tls_sessions = 0

    def _read_counter(self):
        # smtp-sink rewrites one status line ending in CR: "sess=N quit=N mesg=N".
        pending = b""
        while chunk := self.process.stdout.read1(4096):
            pending += chunk
            counts = re.findall(rb"mesg=(\d+)", pending)
            if counts:
                self.messages = int(counts[-1])
            pending = pending[-64:]

    def stop(self):
        self.process.terminate()
        self.process.wait()


class PySink:
    """A small SMTP sink of this script's own, optionally offering STARTTLS.

    It counts messages, how many of them arrived over TLS, and records when the final dot
    of each message carrying an `X-Bench-Seq:` header arrived (time.monotonic, the clock
    the latency client uses).
    """

    def __init__(self, tls_context=None):
        self.port = free_port()
        self.tls_context = tls_context
        self.messages = 0
        self.tls_messages = 0
        self.tls_sessions = 0
        self.arrivals = {}
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        started.wait()

    def _serve(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port, backlog=1024)
        )
        started.set()
        self.loop.run_forever()

    async def _session(self, reader, writer):
        tls = False
        buffer = bytearray()

        async def read_line():
            nonlocal buffer
            while (end := buffer.find(b"\r\n")) < 0:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buffer += chunk
            line = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            return line

        async def read_data():
            nonlocal buffer
            start = 0
            while True:
                if buffer.startswith(b".\r\n"):
                    end = 0
                    break
                end = buffer.find(b"\r\n.\r\n", start)
                if end >= 0:
                    end += 2
                    break
                start = max(0, len(buffer) - 4)
                chunk = await reader.read(1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                buffer += chunk
            arrived = time.monotonic()
            data = bytes(buffer[:end])
            del buffer[: end + 3]
            return arrived, data

        writer.write(b"220 bench-sink ESMTP\r\n")
        try:
            while True:
                await writer.drain()
                line = await read_line()
                verb = line[:4].upper()
                if verb == b"EHLO":
                    extensions = [b"PIPELINING", b"SIZE 100000000", b"8BITMIME"]
                    if self.tls_context is not None and not tls:
                        extensions.append(b"STARTTLS")
                    reply = b"250-bench-sink\r\n"
                    for index, extension in enumerate(extensions):
                        dash = b" " if index == len(extensions) - 1 else b"-"
                        reply += b"250" + dash + extension + b"\r\n"
                    writer.write(reply)
                elif verb == b"STAR" and self.tls_context is not None and not tls:
                    writer.write(b"220 2.0.0 ready\r\n")
                    await writer.drain()
                    await writer.start_tls(self.tls_context)
                    tls = True
                    self.tls_sessions += 1
                    buffer.clear()
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    arrived, data = await read_data()
                    self.messages += 1
                    if tls:
                        self.tls_messages += 1
                    mark = data.find(b"X-Bench-Seq: ")
                    if mark >= 0:
                        seq = data[mark + 13 : data.find(b"\r\n", mark)]
                        self.arrivals[seq.decode()] = arrived
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def sink_tls_context(root):
    """Creates a server TLS context with a self-signed certificate that openssl writes to
    `root`."""
    key, certificate = root / "sink.key", root / "sink.crt"
    run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", certificate]
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context


# ---------------------------------------------------------------------------------------
# The two relays


class Postfix:
    """A private Postfix relay: its own config, queue and data folders under `root`."""

    name = "postfix"

    def __init__(self, root, next_hop_port, tls):
        self.root = root
        self.port = free_port()
        self.config = root / "conf"
        queue, data = root / "queue", root / "data"
        for folder in (self.config, queue, data):
            folder.mkdir(parents=True)
        shutil.chown(data, "postfix")
        tls_level = "may" if tls else "none"
        (self.config / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = staff-mta.clinic.example.org
mydomain = clinic.example.org
myorigin = clinic.example.org
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{next_hop_port}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_tls_security_level = {tls_level}
smtp_tls_loglevel = 1
message_size_limit = 40000000
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
smtputf8_enable = no
"""
        )
        # The services other than smtpd are the ones the tests' Postfix runs.
        services = (REPO / "tests" / "postfix" / "master.cf").read_text()
        (self.config / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n{services}"
        )
        run(["/usr/sbin/postfix", "-c", self.config, "start"])
        wait_listening(self.port, 30, "postfix", root / "maillog")

    def maillog(self):
        return (self.root / "maillog").read_text(errors="replace")

    def stop(self):
        subprocess.run(["/usr/sbin/postfix", "-c", self.config, "stop"], capture_output=True)


class Sealgate:
    """sealgate's release binary serving a config in `root` that routes every domain to
    the sink; with `certificate`, SMIME_RECIPIENT has an S/MIME certificate."""

    name = "sealgate"

    def __init__(self, binary, root, next_hop_port, certificate=False):
        self.root = root
        self.port = free_port()
        run([binary, "init", root])
        if certificate:
            make_recipient_certificate(root / "keys")
        portal = free_port()
        (root / "sealgate.toml").write_text(
            f"""[server]
hostname = "sealgate.bench.example"
data_dir = "{root}/data"
keys_dir = "{root}/keys"

[inbound]
listen = ["127.0.0.1:{self.port}"]
# The 100-session scenario comes from one client address.
max_sessions = 300
max_sessions_per_client = 200
max_message_size = "40MB"

[portal]
listen = "127.0.0.1:{portal}"
base_url = "https://127.0.0.1:{portal}"

[[delivery.routes]]
domain = "*"
host = "127.0.0.1"
port = {next_hop_port}
"""
        )
        self.log = root / "sealgate.log"
        self.process = subprocess.Popen(
            [binary, "serve", "--config", root / "sealgate.toml"],
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.port, 30, "sealgate", self.log)

    def peak_rss_kib(self):
        """VmHWM of the serve process: its peak resident memory so far, in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def make_recipient_certificate(keys):
    """Writes a self-signed S/MIME certificate for SMIME_RECIPIENT into keys/recipients."""
    folder = keys / "recipients"
    folder.mkdir(exist_ok=True)
    run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN=Bob Partner/emailAddress={SMIME_RECIPIENT}",
         "-addext", f"subjectAltName=email:{SMIME_RECIPIENT}",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
         "-addext", "extendedKeyUsage=emailProtection",
         "-keyout", keys / "bob-private.key", "-out", folder / "bob.pem"]
    )


# ---------------------------------------------------------------------------------------
# Load


def send_batch(relay_port, sink, count, size, sessions, recipient, subject=None):
    """Sends `count` messages of `size` bytes over `sessions` sessions with smtp-source and
    waits until the sink has them. Returns (seconds to the last 250, seconds to the sink)."""
    before = sink.messages
    command = ["/usr/sbin/smtp-source", "-d", "-s", str(sessions), "-l", str(size),
               "-m", str(count), "-f", SENDER, "-t", recipient]
    if subject:
        command += ["-S", subject]
    command.append(f"127.0.0.1:{relay_port}")
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    accepted = time.monotonic() - start
    if result.returncode != 0:
        fail(f"smtp-source failed: {result.stderr.strip()}")
    deadline = start + DRAIN_TIMEOUT
    while sink.messages < before + count:
        if time.monotonic() > deadline:
            fail(f"only {sink.messages - before} of {count} messages reached the sink")
        time.sleep(0.01)
    return accepted, time.monotonic() - start


class Client:
    """A plain SMTP client on one connection, for latency and large messages."""

    def __init__(self, port):
        self.socket = socket.create_connection(("127.0.0.1", port))
        # Without this, Nagle's algorithm delays the final dot until the relay's delayed ACK
        # (up to 40 ms on Linux), which would be counted as the relay's latency.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.socket.makefile("rb")
        self.reply()
        self.command(b"EHLO bench.client.example")

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                fail("the relay closed the connection")
            lines.append(line)
            if line[3:4] != b"-":
                return lines[-1]

    def command(self, line, expect=b"2"):
        self.socket.sendall(line + b"\r\n")
        reply = self.reply()
        if not reply.startswith(expect):
            fail(f"{line.decode()} answered {reply.decode(errors='replace').strip()}")
        return reply

    def send(self, recipient, message):
        """Sends `message` (CRLF lines, dot-stuffing not needed) and returns the monotonic
        time just before the final dot and after the 250."""
        self.command(f"MAIL FROM:<{SENDER}>".encode())
        self.command(f"RCPT TO:<{recipient}>".encode())
        self.command(b"DATA", expect=b"354")
        self.socket.sendall(message)
        final_dot = time.monotonic()
        self.command(b".")
        return final_dot, time.monotonic()

    def close(self):
        self.command(b"QUIT")
        self.socket.close()


def build_message(seq, size, subject="benchmark"):
    header = (
        f"From: <{SENDER}>\r\nTo: <{PLAIN_RECIPIENT}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{seq}@bench.example>\r\nX-Bench-Seq: {seq}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_latency(relay_port, sink, samples):
    """Sends `samples` 1 KB messages one at a time. Returns the seconds from the final dot
    to the sink's receipt of each message that arrived within 10 s, and how many did not."""
    client = Client(relay_port)
    latencies = []
    missing = 0
    for index in range(samples):
        seq = f"lat-{relay_port}-{index}"
        final_dot, _ = client.send(PLAIN_RECIPIENT, build_message(seq, 1024))
        # NOTE: sealgate routes about one message in 870 to the portal, because the queue id
        # in its own Received: field can contain 10 digits that pass the NHS number check.
        # The sink then gets a notification instead, so the sample is skipped.
        deadline = final_dot + 10
        while seq not in sink.arrivals and time.monotonic() < deadline:
            time.sleep(0.0002)
        if seq in sink.arrivals:
            latencies.append(sink.arrivals[seq] - final_dot)
        else:
            missing += 1
    client.close()
    return latencies, missing


# ---------------------------------------------------------------------------------------
# Report


class Report:
    def __init__(self):
        self.lines = []

    def out(self, text=""):
        print(text, flush=True)
        self.lines.append(text)


def throughput(args, report, binary, root, sink_kind, scenario):
    """Runs one scenario: `runs` interleaved runs through Postfix and through sealgate."""
    name, size, sessions, count, route = scenario
    count = max(50, count // 10) if args.quick else count
    folder = root / name
    folder.mkdir()

    tls = sink_kind == "tls"
    sink = PySink(sink_tls_context(folder)) if tls else SmtpSink(folder)
    relays = []
    if route == "relay":
        relays.append(Postfix(folder / "postfix", sink.port, tls))
    recipient, subject = PLAIN_RECIPIENT, None
    if route == "smime":
        recipient, subject = SMIME_RECIPIENT, SENSITIVE_SUBJECT
    elif route == "portal":
        recipient, subject = PORTAL_RECIPIENT, SENSITIVE_SUBJECT
    relays.append(Sealgate(binary, folder / "sealgate", sink.port, route == "smime"))
    rates = {relay.name: [] for relay in relays}
    accept_rates = {relay.name: [] for relay in relays}
    try:
        # A warm-up batch starts the relays' worker processes and fills their caches.
        for relay in relays:
            send_batch(relay.port, sink, 20, size, min(sessions, 20), recipient, subject)

        # Runs alternate between the relays, so a change in the machine's load hits both.
        for attempt in range(args.runs):
            for relay in relays:
                load = loadavg()
                accepted, delivered = send_batch(
                    relay.port, sink, count, size, sessions, recipient, subject
                )
                rate = count / delivered
                rates[relay.name].append(rate)
                accept_rates[relay.name].append(count / accepted)
                report.out(
                    f"  {name} run {attempt + 1} {relay.name}: {count} msgs, "
                    f"{rate:.0f} msgs/s delivered, {count / accepted:.0f} msgs/s accepted, "
                    f"load {load:.2f}"
                )
        if tls:
            # Every message must have crossed a TLS session to the sink, from both relays.
            if sink.tls_messages != sink.messages or sink.tls_sessions == 0:
                fail(f"{name}: {sink.messages - sink.tls_messages} messages reached the sink in clear")
            report.out(
                f"  {name}: all {sink.messages} messages reached the sink over TLS "
                f"({sink.tls_sessions} TLS sessions)"
            )
    finally:
        for relay in relays:
            relay.stop()
        sink.stop()
    return {
        relay: (statistics.median(rates[relay]), statistics.median(accept_rates[relay]))
        for relay in rates
    }


def ceiling(args, report, root, size, sessions, count):
    count = max(50, count // 10) if args.quick else count
    folder = root / f"ceiling-{size}-{sessions}"
    folder.mkdir()
    sink = SmtpSink(folder)
    rates = []
    try:
        for attempt in range(args.runs):
            load = loadavg()
            _, delivered = send_batch(sink.port, sink, count, size, sessions, PLAIN_RECIPIENT)
            rates.append(count / delivered)
            report.out(f"  ceiling run {attempt + 1}: {rates[-1]:.0f} msgs/s, load {load:.2f}")
    finally:
        sink.stop()
    return statistics.median(rates)


SCENARIOS = [
    # name, message size in bytes, sessions, messages, route
    ("relay-10k-s20", 10 * 1024, 20, 5000, "relay"),
    ("starttls-10k-s20", 10 * 1024, 20, 5000, "relay"),
    ("relay-1k-s20", 1024, 20, 2000, "relay"),
    ("relay-100k-s20", 100 * 1024, 20, 1000, "relay"),
    ("relay-10k-s1", 10 * 1024, 1, 500, "relay"),
    ("relay-10k-s100", 10 * 1024, 100, 2000, "relay"),
    ("smime-10k-s20", 10 * 1024, 20, 2000, "smime"),
    ("portal-10k-s20", 10 * 1024, 20, 2000, "portal"),
]


def run_throughput(args, report, binary, root):
    report.out("## Throughput (median of runs, messages per second delivered to the sink)")
    results = []
    relay_10k = None
    for scenario in SCENARIOS:
        name = scenario[0]
        if args.only and not any(part in name for part in args.only):
            continue
        sink_kind = "tls" if name.startswith("starttls") else "smtp-sink"
        medians = throughput(args, report, binary, root, sink_kind, scenario)
        if name == "relay-10k-s20":
            relay_10k = medians.get("postfix", (None,))[0]
        results.append((name, medians))
    ceiling_rate = ceiling(args, report, root, 10 * 1024, 20, 5000)
    report.out()
    report.out(
        "| scenario | Postfix msgs/s | sealgate msgs/s | sealgate/Postfix "
        "| Postfix accepted msgs/s | sealgate accepted msgs/s |"
    )
    report.out("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, medians in results:
        gate, gate_accepted = medians["sealgate"]
        if "postfix" in medians:
            postfix, postfix_accepted = medians["postfix"]
            report.out(
                f"| {name} | {postfix:.0f} | {gate:.0f} | {gate / postfix:.2f} "
                f"| {postfix_accepted:.0f} | {gate_accepted:.0f} |"
            )
        elif relay_10k:
            # The sealgate-only routes are compared with Postfix's plain relay rate.
            report.out(
                f"| {name} | ({relay_10k:.0f}, relay-10k-s20) | {gate:.0f} "
                f"| {gate / relay_10k:.2f} | | {gate_accepted:.0f} |"
            )
        else:
            report.out(f"| {name} | - | {gate:.0f} | - | | {gate_accepted:.0f} |")
    report.out(f"| ceiling: smtp-source to smtp-sink, 10 KB, 20 sessions | | {ceiling_rate:.0f} | | | |")
    report.out()


def run_latency(args, report, binary, root):
    samples = 20 if args.quick else 300
    folder = root / "latency"
    folder.mkdir()
    sink = PySink()
    postfix = Postfix(folder / "postfix", sink.port, tls=False)
    gateway = Sealgate(binary, folder / "sealgate", sink.port)
    report.out(f"## Latency: {samples} messages of 1 KB, one at a time, final dot to the sink")
    report.out()
    report.out("| relay | p50 ms | p99 ms | not at the sink within 10 s | load |")
    report.out("| --- | ---: | ---: | ---: | ---: |")
    try:
        figures = {}
        for relay in (postfix, gateway):
            measure_latency(relay.port, sink, 5)
            load = loadavg()
            values, missing = measure_latency(relay.port, sink, samples)
            figures[relay.name] = percentile(values, 0.5)
            report.out(
                f"| {relay.name} | {percentile(values, 0.5) * 1000:.1f} | "
                f"{percentile(values, 0.99) * 1000:.1f} | {missing} | {load:.2f} |"
            )
        report.out(f"\np50 ratio sealgate/Postfix: {figures['sealgate'] / figures['postfix']:.2f}\n")
    finally:
        gateway.stop()
        postfix.stop()
        sink.stop()


def run_large(args, report, binary, root):
    size = 3_500_000 if args.quick else 35_000_000
    report.out(f"## Large messages: one message of {size / 1e6:.1f} MB per route")
    report.out()
    report.out(
        "| route | relay | to 250 s | to sink s | RSS at start MiB | peak RSS at 250 MiB "
        "| peak RSS MiB | peak RSS / size | load |"
    )
    report.out("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    routes = [
        ("relay", PLAIN_RECIPIENT, "large benchmark"),
        ("smime", SMIME_RECIPIENT, SENSITIVE_SUBJECT),
        ("portal", PORTAL_RECIPIENT, SENSITIVE_SUBJECT),
    ]
    for route, recipient, subject in routes:
        folder = root / f"large-{route}"
        folder.mkdir()
        sink = PySink()
        relays = []
        if route == "relay":
            relays.append(Postfix(folder / "postfix", sink.port, tls=False))
        relays.append(Sealgate(binary, folder / "sealgate", sink.port, route == "smime"))
        try:
            for relay in relays:
                before = sink.messages
                message = build_message(f"large-{route}-{relay.name}", size, subject)
                load = loadavg()
                if relay.name == "sealgate":
                    at_start = relay.peak_rss_kib() / 1024
                client = Client(relay.port)
                start = time.monotonic()
                _, accepted = client.send(recipient, message)
                client.close()
                if relay.name == "sealgate":
                    at_reply = relay.peak_rss_kib() / 1024
                deadline = time.monotonic() + DRAIN_TIMEOUT
                while sink.messages <= before:
                    if time.monotonic() > deadline:
                        fail(f"the {route} message through {relay.name} did not reach the sink")
                    time.sleep(0.005)
                delivered = time.monotonic() - start
                if relay.name == "sealgate":
                    peak = relay.peak_rss_kib() / 1024
                    memory = (
                        f"{at_start:.0f} | {at_reply:.0f} | {peak:.0f} | "
                        f"{peak * 1024 * 1024 / size:.2f}"
                    )
                else:
                    memory = "- | - | - | -"
                report.out(
                    f"| {route} | {relay.name} | {accepted - start:.2f} | {delivered:.2f} | "
                    f"{memory} | {load:.2f} |"
                )
        finally:
            for relay in relays:
                relay.stop()
            sink.stop()
    report.out()


def run_micro(args, report):
    report.out("## openssl speed -evp aes-256-cbc (reference for S/MIME's content cipher)")
    report.out()
    seconds = "1" if args.quick else "3"
    speed = run(["openssl", "speed", "-seconds", seconds, "-evp", "aes-256-cbc"])
    report.out("```text")
    for line in speed.splitlines()[-2:]:
        report.out(line)
    report.out("```")
    report.out()
    report.out("## cargo bench (criterion)")
    report.out()
    command = ["cargo", "bench", "--locked", "--bench", "pipeline", "--"]
    if args.quick:
        command += ["--warm-up-time", "0.5", "--measurement-time", "1", "--sample-size", "10"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"cargo bench failed:\n{result.stderr[-3000:]}")
    report.out("```text")
    for line in result.stdout.splitlines():
        # Lines with a percentage compare with an earlier run in target/criterion; skip them.
        if "%" in line:
            continue
        if "time:" in line or "thrpt:" in line or re.match(r"^\S+/\S+", line):
            report.out(line.rstrip())
    report.out("```")


def machine_facts(report):
    model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    postfix = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                             capture_output=True, text=True).stdout.strip()
    report.out(f"machine: {os.cpu_count()} cores, {model.group(1) if model else 'unknown CPU'}, "
               f"kernel {os.uname().release}, Postfix {postfix}, Python {sys.version.split()[0]}")
    report.out(f"load average at start: {Path('/proc/loadavg').read_text().strip()}")
    report.out()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: one run per scenario, a tenth of the messages")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only the throughput scenarios whose names contain one of these")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["throughput", "latency", "large", "micro"],
                        help="parts to leave out")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    check_tools()

    print("bench: cargo build --release --locked", flush=True)
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO, check=True)
    binary = REPO / "target" / "release" / "sealgate"

    root = Path(tempfile.mkdtemp(prefix="sealgate-bench-"))
    # The postfix user must reach the private queue below this folder.
    root.chmod(0o755)
    report = Report()
    machine_facts(report)
    try:
        if "throughput" not in args.skip:
            run_throughput(args, report, binary, root)
        if "latency" not in args.skip:
            run_latency(args, report, binary, root)
        if "large" not in args.skip:
            run_large(args, report, binary, root)
        if "micro" not in args.skip:
            run_micro(args, report)
    finally:
        if args.output:
            args.output.write_text("\n".join(report.lines) + "\n")
        if args.keep:
            print(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
