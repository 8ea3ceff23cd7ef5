"""Issuing the worker plane's mutual-TLS material: a private CA and one leaf certificate.

Why one leaf for every party: router and workers are one trust domain (the deployment), they
all mount the same Secret, and worker addresses are pod IPs nobody knows in advance. So the
leaf names `TLS_SERVER_NAME` (clients verify that name, `grpc.ssl_target_name_override`),
carries both serverAuth and clientAuth, and is signed by a CA that exists only for this
deployment; whoever lacks the key can neither serve nor call the Worker API. The operator
writes the result into the Secret it owns (`worker_auth.secret_name`) and rotates it on
request; tests use it directly. `cryptography` is imported only when issuing.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from mainsail.spec.worker_auth import TLS_FILES, TLS_SERVER_NAME, TLSMaterial

VALID_DAYS = 365


def issue(common_name: str = TLS_SERVER_NAME, *, days: int = VALID_DAYS) -> TLSMaterial:
    """A fresh CA and a leaf for `TLS_SERVER_NAME` (EC P-256), as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TLSMaterial(
        ca=ca.public_bytes(pem),
        cert=leaf.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def write(material: TLSMaterial, directory: Path) -> Path:
    """Write ``material`` as `TLS_FILES` into ``directory`` (the key readable by owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in zip(TLS_FILES, (material.ca, material.cert, material.key), strict=True):
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600 if name == "tls.key" else 0o644)
    return directory
