"""Workload certificates made with openssl: a CA, and certificates whose name is an identity.

What cert-manager issues in a cluster (k8s/components), for fleets and tests on
one machine: each workload's folder holds tls.crt, tls.key and ca.crt, the keys
of a kubernetes.io/tls Secret, so a server's `tls_dir` and a client's
GRASPFLEET_TLS_CLIENT_DIR can point at it. The Common Name is the workload's
identity (services.common.auth); every certificate serves as a server
certificate for localhost and 127.0.0.1 and as a client certificate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, days: int = 1) -> Path:
    """A CA (ca.crt, ca.key in `folder`) that signs workload certificates; returns ca.crt."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *EC_KEY, "-days", str(days), "-subj", "/CN=graspfleet-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"),
    )  # fmt: skip
    return folder / "ca.crt"


def issue(folder: Path, ca: Path, identity: str, days: int = 1) -> Path:
    """Issues `identity`'s certificate in `folder` (tls.crt, tls.key, ca.crt); returns the folder.

    It is signed by the CA whose ca.crt is `ca` (its ca.key beside it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    extensions = folder / "extensions.cnf"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    # A "/" in the name would start a new field of the subject: escape it.
    subject = "/CN=" + identity.replace("/", "\\/")
    _openssl(
        "req", "-new", *EC_KEY, "-subj", subject,
        "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.csr"),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(folder / "tls.csr"), "-CA", str(ca),
        "-CAkey", str(ca.with_name("ca.key")), "-CAcreateserial", "-days", str(days),
        "-extfile", str(extensions), "-out", str(folder / "tls.crt"),
    )  # fmt: skip
    (folder / "ca.crt").write_bytes(ca.read_bytes())
    return folder
