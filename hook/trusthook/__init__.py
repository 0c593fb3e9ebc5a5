"""trusthook: a hardware-rooted chain of trust for containers.

This package's top level imports nothing: the OCI hook and the runtime shim run on
every container start and must stay standard-library only and fast to import.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
