"""Team mode's certificates, kept in the `tls` volume (mounted read-only by the gateway only).

    stack-tls [init]   check the team-mode settings; with MLFLOW_TLS=on put the server certificate in place:
                       the one given (MLFLOW_TLS_CERT / MLFLOW_TLS_KEY), else one signed by the stack's own CA
                       (created once), re-issued when it nears expiry or MLFLOW_PUBLIC_NAMES changed
    stack-tls renew    issue a new server certificate from the stack's CA now (then restart the gateway)
    stack-tls show     the certificate the gateway serves: names, expiry, SHA-256 fingerprint

`init` runs as the one-shot compose service `tls` before the gateway and the tracking server start, so a
team-mode mistake (no logins, no public name, a certificate that does not match its key) stops `up` with one
line. It runs as root with no network and every capability dropped but three: only so it can write the CA
into the project folder (`certs/ca.crt`, a bind mount owned by whoever cloned the repository) and hand that
file to its owner, and give the gateway's uid its key. The CA's own key never leaves the volume.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlflow_stack_server.atomic_files import write_atomically as write
from mlflow_stack_server.console import Console
from mlflow_stack_server.settings import Settings, SettingsError, is_ip

console = Console("[tls]")
log = console.log
CA_DAYS = 3650
# Under the 398 days browsers accept from public CAs, so the same policy holds if the CA is ever swapped.
SERVER_DAYS = 397
RENEW_BEFORE_DAYS = 30


class TeamModeError(SettingsError):
    """A given certificate or key that cannot work (the team-mode settings themselves are checked by Settings)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _subject_alternative_names(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n) for n in names]
    )


def names_of(certificate: x509.Certificate) -> set[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*extension.get_values_for_type(x509.DNSName), *map(str, extension.get_values_for_type(x509.IPAddress))}


def covers(certificate: x509.Certificate, name: str) -> bool:
    """Whether a client asking for `name` accepts the certificate (one-label wildcards included)."""
    for san in names_of(certificate):
        if san == name or (san.startswith("*.") and "." in name and name.split(".", 1)[1] == san[2:]):
            return True
    return False


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(common_name: str = "mlflow-stack private CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, names: tuple[str, ...]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(_subject_alternative_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def load_ca(settings: Settings) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key_path, ca_path = settings.tls_dir / "ca.key", settings.tls_dir / "ca.crt"
    if not ca_key_path.exists():
        key, certificate = create_ca()
        write(ca_key_path, private_key_pem(key))
        write(ca_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
        log(f"created the stack's private CA (valid {CA_DAYS} days)")
        return key, certificate
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded, x509.load_pem_x509_certificate(ca_path.read_bytes())


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def served_certificate(settings: Settings) -> x509.Certificate | None:
    path = settings.tls_dir / "server.crt"
    return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None


def install_server_pem(settings: Settings, chain: bytes, key: bytes) -> None:
    # HAProxy reads certificate chain and key from one file; server.crt alone is for `show` and clients.
    write(settings.tls_dir / "server.pem", chain.rstrip(b"\n") + b"\n" + key, owner=settings.gateway_uid)
    write(settings.tls_dir / "server.crt", chain, mode=0o644)


def export_ca(settings: Settings, ca: x509.Certificate) -> None:
    """certs/ca.crt in the project folder, owned by that folder's owner: what every client needs."""
    export = settings.tls_export_dir
    if not export.is_dir():
        log(f"{export} is not mounted: the CA stays in the volume only (scripts/tls.sh ca prints it)")
        return
    owner = export.stat()
    target = export / "ca.crt"
    write(target, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    if os.geteuid() == 0:
        os.chown(target, owner.st_uid, owner.st_gid)


def use_given_certificate(settings: Settings) -> None:
    cert_path, key_path = settings.tls_given_dir / "cert.pem", settings.tls_given_dir / "key.pem"
    try:
        chain_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as error:
        raise TeamModeError(f"cannot read the given certificate or key ({error.strerror}: {error.filename})") from error
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as error:
        raise TeamModeError("MLFLOW_TLS_CERT holds no PEM certificate") from error
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TeamModeError("MLFLOW_TLS_KEY holds no unencrypted PEM private key") from error
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != leaf.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise TeamModeError("MLFLOW_TLS_KEY is not the key of MLFLOW_TLS_CERT's (first) certificate")
    if leaf.not_valid_after_utc <= _now():
        raise TeamModeError(f"MLFLOW_TLS_CERT expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    missing = [name for name in settings.public_names if not covers(leaf, name)]
    if missing:
        raise TeamModeError(
            f"MLFLOW_TLS_CERT is for {', '.join(sorted(names_of(leaf))) or 'no names'}, not for "
            f"{', '.join(missing)} (listed in MLFLOW_PUBLIC_NAMES)"
        )
    current = served_certificate(settings)
    if current is None or current.fingerprint(hashes.SHA256()) != leaf.fingerprint(hashes.SHA256()):
        install_server_pem(settings, chain_pem, key_pem)
        log(f"installed the given certificate {fingerprint(leaf)}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}")
    else:
        log("the given certificate is in place")


def needs_new_server_certificate(settings: Settings, ca: x509.Certificate) -> str | None:
    current = served_certificate(settings)
    if current is None:
        return "none yet"
    if current.issuer != ca.subject or _authority_key_id(current) != _key_id(ca):
        return "it was not issued by the stack's CA (a given certificate was in place)"
    if names_of(current) != set(settings.certificate_names):
        return f"MLFLOW_PUBLIC_NAMES changed (was {', '.join(sorted(names_of(current)))})"
    if current.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return f"it expires on {current.not_valid_after_utc:%Y-%m-%d}"
    return None


def _key_id(ca: x509.Certificate) -> bytes:
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def issue(settings: Settings, reason: str) -> None:
    ca_key, ca = load_ca(settings)
    key, certificate = issue_server_certificate(ca_key, ca, settings.certificate_names)
    install_server_pem(settings, certificate.public_bytes(serialization.Encoding.PEM), private_key_pem(key))
    log(
        f"issued a server certificate for {', '.join(settings.certificate_names)} ({reason}), valid until "
        f"{certificate.not_valid_after_utc:%Y-%m-%d}"
    )


def init(settings: Settings, force_new: bool = False) -> None:
    if not settings.tls:
        log("team mode off (MLFLOW_TLS is not 'on'): the gateway serves plain HTTP")
        return
    if settings.cert_given:
        use_given_certificate(settings)
        return
    _, ca = load_ca(settings)
    reason = "renew asked for" if force_new else needs_new_server_certificate(settings, ca)
    if reason:
        issue(settings, reason)
    else:
        log("the server certificate is current")
    export_ca(settings, ca)
    log(f"clients verify with certs/ca.crt (SHA-256 {fingerprint(ca)})")


def show(settings: Settings) -> None:
    current = served_certificate(settings)
    if current is None:
        console.fail("no server certificate yet (MLFLOW_TLS=on and `docker compose up` make one)")
    print(f"names: {', '.join(sorted(names_of(current)))}")
    print(f"issuer: {current.issuer.rfc4514_string()}")
    print(f"valid until: {current.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    print(f"sha256: {fingerprint(current)}")


def main(argv: list[str] | None = None) -> None:
    """Console script `stack-tls [init] | renew | show`."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "init"
    if command not in ("init", "renew", "show") or len(argv) > 1:
        console.fail("usage: stack-tls [init] | renew | show")
    # No database or bucket here: the `tls` service has the team-mode variables only.
    settings = console.configured(lambda: Settings.from_environment(server=False))
    if command == "show":
        show(settings)
        return
    if command == "renew" and (not settings.tls or settings.cert_given):
        console.fail("renew issues from the stack's own CA: needs MLFLOW_TLS=on and no MLFLOW_TLS_CERT")
    console.configured(lambda: init(settings, force_new=command == "renew"))
