"""A throwaway etcd server on loopback for IPAM tests and benchmarks.

``EtcdServer`` runs Debian's ``etcd`` (package ``etcd-server``) on 127.0.0.1 with free ports
and a temporary data dir, can be stopped and started again on the same ports and data (an etcd
restart), and removes everything on ``close``. Nothing here listens beyond loopback. With a
:class:`Pki` (``make_pki``: a CA, a server certificate for 127.0.0.1, a client certificate, and
an unrelated CA) it serves clients over TLS, and with ``client_cert_auth`` only to clients
presenting a certificate of that CA.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType

from nodeagent.ipam.configtypes import EtcdConfig, EtcdEndpoint
from nodeagent.ipam.etcd.client import EtcdClient, EtcdError, EtcdUnavailable

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def available() -> bool:
    return os.access(ETCD, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Pki:
    """PEM files: ``ca``, ``server``/``server_key`` (127.0.0.1, localhost), ``client``/
    ``client_key`` (CN ``client_cn``, etcd's user name under client-cert auth), ``other_ca``
    (signed nothing here)."""

    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    other_ca: Path
    client_cn: str


def make_pki(directory: Path, client_cn: str = "root") -> Pki:
    """Fresh keys and certificates, valid for a day, written under ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path = directory / f"{stem}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        cn: str,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
        extensions: list[x509.ExtensionType],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (name(cn), key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(signer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )
        for ext in extensions:
            builder = builder.add_extension(ext, critical=isinstance(ext, x509.BasicConstraints))
        return builder.sign(signer_key, hashes.SHA256()), key

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        return issue(cn, None, [x509.BasicConstraints(ca=True, path_length=0), usage])

    authority, other = ca("nodeagent test CA"), ca("unrelated test CA")
    server = issue(
        "127.0.0.1",
        authority,
        [
            x509.SubjectAlternativeName(
                [x509.IPAddress(ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            # etcd's own gRPC gateway connects to it with this certificate: client use too
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
        ],
    )
    client = issue(client_cn, authority, [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])])
    return Pki(
        ca=write("ca", *authority),
        server=write("server", *server),
        server_key=directory / "server.key",
        client=write("client", *client),
        client_key=directory / "client.key",
        other_ca=write("other-ca", *other),
        client_cn=client_cn,
    )


class EtcdServer:
    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        pki: Pki | None = None,
        client_cert_auth: bool = False,
    ) -> None:
        self._own_dir = data_dir is None
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="nodeagent-etcd-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.pki = pki
        self.client_cert_auth = client_cert_auth
        self.proc: subprocess.Popen[bytes] | None = None
        if client_cert_auth and pki is None:
            raise ValueError("client certificate auth needs a Pki")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The client URL, as ``etcd_host`` takes it (https:// with TLS)."""
        return f"{'https' if self.pki else 'http'}://{self.endpoint}"

    def client_config(self, timeout: float = 0.5) -> EtcdConfig:
        """A client config that this server accepts (without user/password)."""
        pki, mutual = self.pki, self.client_cert_auth
        return EtcdConfig(
            endpoints=(EtcdEndpoint("127.0.0.1", self.client_port),),
            tls=pki is not None,
            ca_cert_file=pki.ca if pki else None,
            cert_file=pki.client if pki and mutual else None,
            key_file=pki.client_key if pki and mutual else None,
            timeout=timeout,
        )

    def etcdctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` against this server (its certificates; ``user`` as name:password)."""
        argv = [ETCDCTL, "--endpoints", self.url, "--command-timeout", "5s"]
        if self.pki:
            argv += ["--cacert", str(self.pki.ca)]
            if self.client_cert_auth:
                argv += ["--cert", str(self.pki.client), "--key", str(self.pki.client_key)]
        if user:
            argv += ["--user", user]
        return subprocess.run(
            [*argv, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=15,
            env={**os.environ, "ETCDCTL_API": "3"},
        )

    def start(self, timeout: float = 15.0) -> None:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD,
            "--name", "ipam-test",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"ipam-test={peer}",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip
        if self.pki:
            args += ["--cert-file", str(self.pki.server), "--key-file", str(self.pki.server_key)]
        if self.client_cert_auth:
            assert self.pki is not None
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.pki.ca)]
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if self._serving():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not come up in {timeout} s: {self.log_tail()}")

    def _serving(self) -> bool:
        """The v3 API answers a linearizable read (so a leader is elected); a refusal is an
        answer too (auth enabled by an earlier run on the same data)."""
        client = EtcdClient(self.client_config())
        try:
            client.range(b"/health")
        except EtcdUnavailable:
            return False
        except EtcdError:
            return True
        finally:
            client.close()
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.dir / "etcd.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
