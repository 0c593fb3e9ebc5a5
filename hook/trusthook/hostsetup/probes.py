"""What ``trusthook doctor`` reads from the world, each as one question: is a TPM device
usable, is a program installed and root's alone, does the kernel say its clock is
synchronised, what does the attestation server's health endpoint answer. Each returns a fact
or the reason it is missing; ``doctor`` turns them into checks."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import http.client
import os
import shutil
import ssl
import stat
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from trusthook.common.clock import iso

TIMEOUT = 10.0  # seconds for one question to the agent, the TPM or the server
TIME_ERROR = 5  # adjtimex(2): the kernel's clock is not synchronised


def unsafe(path: Path) -> str | None:
    """Why a program root runs is not root's alone (it or its directory writable by others
    or owned by another user), or None."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return (
                f"{p} is not root's alone (owner uid {st.st_uid}, mode"
                f" {stat.S_IMODE(st.st_mode):04o}), and root runs {path.name} at container starts"
            )
    return None


def program_problem(path: str | None, what: str) -> str | None:
    """Why ``path`` cannot be the installed program ``what`` (missing, not executable, not
    root's alone), or None."""
    if not path:
        return f"{what}: no path configured"
    program = Path(path)
    if not program.is_absolute():
        found = shutil.which(path)
        if found is None:
            return f"{what} {path!r} is not in PATH"
        program = Path(found)
    if not (program.is_file() and os.access(program, os.X_OK)):
        return f"{what} {program} is not installed (no executable file there)"
    return unsafe(program)


def kernel_clock_synced() -> bool | None:
    """Whether the kernel says its clock is synchronised (adjtimex(2), nothing changed);
    None if it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != TIME_ERROR


def device_problem(path: Path) -> tuple[str, str] | None:
    """Why the TPM device ``path`` cannot be used, and the fix; None if it can."""
    plain = path.with_name(path.name.replace("tpmrm", "tpm"))
    if not path.exists():
        if path != plain and plain.exists():
            return (
                f"no resource manager device {path}, though there is a TPM at {plain}",
                "use a kernel with the TPM resource manager (4.12 or later), or set [tpm]"
                f' tcti = "device:{plain}" if nothing else uses the TPM',
            )
        return (
            f"no TPM device {path}",
            "enable the TPM in the firmware and load its driver (tpm_tis or tpm_crb);"
            " ls /sys/class/tpm shows what the kernel found",
        )
    if not stat.S_ISCHR(path.stat().st_mode):
        return f"{path} is not a character device", "point [tpm] tcti at the TPM"
    version = Path("/sys/class/tpm") / plain.name / "tpm_version_major"
    if version.exists() and version.read_text().strip() != "2":
        return f"{path} is not a TPM 2.0", "trusthook needs a TPM 2.0"
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        if e.errno != errno.EBUSY or path.name.startswith("tpmrm"):  # the agent holds tpm0
            return f"cannot open {path}: {e.strerror}", "run trusthook doctor as root"
    return None


def health(host: str, port: int, context: ssl.SSLContext) -> tuple[int, datetime | None, datetime]:
    """``GET /v1/health`` over verified TLS: the status, the server's Date, and when its
    certificate expires."""
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=TIMEOUT)
    try:
        conn.request("GET", "/v1/health")
        response = conn.getresponse()
        response.read()
        peer = conn.sock.getpeercert() if isinstance(conn.sock, ssl.SSLSocket) else None
    finally:
        conn.close()
    not_after = str((peer or {}).get("notAfter", "Jan  1 00:00:00 1970 GMT"))
    date = response.getheader("Date")
    return (
        response.status,
        parsedate_to_datetime(date) if date else None,
        datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC),
    )


def expiry_note(host: str, port: int, code: int) -> str:
    """When the server's certificate expired, read without verifying it (for the message
    only: nothing from that connection is believed), or nothing."""
    if code != 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return ""
    from cryptography import x509  # noqa: PLC0415

    try:
        pem = ssl.get_server_certificate((host, port), timeout=TIMEOUT)
        not_after = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
    except (OSError, ValueError):
        return ""
    return f": on {iso(not_after)}"
