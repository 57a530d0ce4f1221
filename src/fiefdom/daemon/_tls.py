"""TLS on the control listener: one ``ssl.SSLContext`` (TLS 1.2 at least) holding the
certificate chain of ``control.tls_cert`` and the private key of ``control.tls_key``.

``reload()`` (SIGHUP) loads both files again into the same context: connections
made from then on get the new certificate, open ones keep theirs. The files are
read once, checked on a scratch context, and only then loaded into the served one,
from the very bytes checked: a bad file (or one replaced half-way) leaves the
certificate served as it was. Errors name the setting and the file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .._errors import ConfigurationError
from .._log import get_logger
from ._config import Config

log = get_logger("fiefdom.daemon")

_CERT_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*.+?\s*-----END CERTIFICATE-----", re.DOTALL
)


def server_tls(config: Config) -> ServerTLS | None:
    """The listener's TLS, loaded, when ``control.tls_cert`` and ``control.tls_key``
    are set (relative paths: to the configuration file's folder); raises
    ConfigurationError naming the setting and the file that is wrong."""
    control = config.control
    if control.tls_cert is None or control.tls_key is None:
        return None
    base = Path(config.base_dir)
    return ServerTLS(base / control.tls_cert, base / control.tls_key)


class ServerTLS:
    """The SSLContext the control listener serves with, and how to reload it."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.fingerprint = self._load(self.context)

    def reload(self) -> bool:
        """Load the certificate and key from their files again (SIGHUP); on failure
        log the error and keep serving the previous ones. Returns whether it loaded."""
        try:
            fingerprint = self._load(self.context)
        except ConfigurationError as exc:
            log.error(
                "TLS reload failed: the previous certificate is still served",
                error=str(exc),
                fingerprint=self.fingerprint,
            )
            return False
        self.fingerprint = fingerprint
        log.info(
            "TLS certificate reloaded: new connections get it, open ones keep theirs",
            cert=str(self.cert),
            key=str(self.key),
            fingerprint=fingerprint,
        )
        return True

    def _load(self, context: ssl.SSLContext) -> str:
        """Check the two files and load them into ``context``; returns the SHA-256
        fingerprint of the certificate (as ``openssl x509 -fingerprint -sha256``
        prints it)."""
        cert = _read("control.tls_cert", self.cert)
        key = _read("control.tls_key", self.key)
        first = _CERT_BLOCK.search(cert)
        if first is None:
            raise ConfigurationError(
                f"control.tls_cert: {self.cert} holds no PEM certificate "
                "('-----BEGIN CERTIFICATE-----'); set control.tls_cert to the certificate "
                "(chain) file"
            )
        if b"PRIVATE KEY-----" not in key:
            raise ConfigurationError(
                f"control.tls_key: {self.key} holds no PEM private key "
                "('-----BEGIN ... PRIVATE KEY-----'); set control.tls_key to the "
                "certificate's key file"
            )
        if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
            raise ConfigurationError(
                f"control.tls_key: {self.key} is encrypted, and the daemon has no "
                "passphrase to give: store the key unencrypted, readable by the daemon's "
                "user only (openssl pkey -in KEY -out KEY)"
            )
        with _in_memory(cert) as cert_path, _in_memory(key) as key_path:
            # A scratch context first: a failed load can leave a context without a key.
            for target in (_scratch(), context):
                try:
                    target.load_cert_chain(cert_path, key_path, password=_no_passphrase)
                except ssl.SSLError as exc:
                    raise ConfigurationError(self._explain(exc, cert)) from None
        der = ssl.PEM_cert_to_DER_cert(first.group().decode("ascii", "replace"))
        digest = hashlib.sha256(der).hexdigest().upper()
        return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))

    def _explain(self, exc: ssl.SSLError, cert: bytes) -> str:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return (
                f"control.tls_key: {self.key} is not the private key of the certificate in "
                f"{self.cert}; set control.tls_key to that certificate's key"
            )
        try:
            _scratch().load_verify_locations(cadata=cert.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as cert_exc:
            return (
                f"control.tls_cert: {self.cert} is not a valid PEM certificate: {_reason(cert_exc)}"
            )
        return f"control.tls_key: {self.key} is not a valid PEM private key: {_reason(exc)}"


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting}: cannot read {path}: {exc.strerror or exc}; make it readable by the "
            f"daemon's user, or set {setting} to another file"
        ) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc)


def _scratch() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def _no_passphrase() -> bytes:
    # Never OpenSSL's own prompt on the terminal: an encrypted key just fails.
    return b""


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path that reads ``data``: an in-memory file where the system has them (the
    key is not written anywhere else), else a temporary file only this user reads."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("fiefdom-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as file:
                file.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
    else:
        with tempfile.TemporaryDirectory() as folder:  # created with mode 0700
            path = Path(folder) / "pem"
            path.write_bytes(data)
            yield str(path)
