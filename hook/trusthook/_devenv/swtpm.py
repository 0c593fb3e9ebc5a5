"""A real TPM 2.0 simulator (swtpm) with EK and platform certificates from swtpm's local CA."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from tpm2_pytss import ESAPI, TPM2_SU, TSS2_Exception

from trusthook._devenv.child import spawn, stop, wait_ready
from trusthook.errors import ServiceError


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def free_port_pair() -> int:
    """A loopback port p such that p and p+1 were both free a moment ago."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise ServiceError("no free pair of loopback ports for swtpm")


class Swtpm:
    """``swtpm socket`` on loopback, its state made by ``swtpm_setup`` on first start."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def setup(self) -> None:
        """Manufacture the TPM: EK, EK certificate and platform certificate."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if any(self.state_dir.glob("tpm2-*.permall")):
            return
        subprocess.run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                str(self.state_dir),
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> Swtpm:
        self.setup()
        if not (self.port and _port_pair_free(self.port)):  # a restart keeps a free port
            self.port = free_port_pair()
        log_path = self.state_dir / "swtpm.log"
        self._proc = spawn(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            log_path,
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port + 1), timeout=0.2).close()
            except OSError:
                return False
            return True

        try:
            wait_ready(
                self._proc, listening, what="swtpm", log_path=log_path, timeout=10, poll=0.02
            )
        except ServiceError:
            self._proc = None
            raise
        return self

    def stop(self) -> None:
        """Stop the swtpm this object started (by its PID, nobody else's), after an orderly
        TPM2_Shutdown so the next start reports a safe clock (``clockInfo.safe``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._shutdown_tpm()
        stop(self._proc, timeout=10)
        self._proc = None

    def _shutdown_tpm(self) -> None:
        """TPM2_Shutdown(CLEAR), as an OS does before power-off; a TPM that does not answer is
        stopped anyway."""
        with contextlib.suppress(TSS2_Exception), ESAPI(self.tcti) as ectx:
            ectx.shutdown(TPM2_SU.CLEAR)

    def restart(self) -> Swtpm:
        """A host reboot: orderly stop, then start on the same state (the reset count goes up,
        PCRs are reset), on the same port if it is still free (``tcti`` tells)."""
        self.stop()
        return self.start()

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
