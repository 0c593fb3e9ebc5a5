"""Measurement: the canonical rootfs encoding and the config digests (docs/measurement.md).

Public API (what a second implementation or an embedding tool calls): the names in ``__all__``.
Everything else in trusthook is internal and may change.
"""

from trusthook.common.jcs import canonicalize
from trusthook.measure.backend import Hasher, PythonHasher, select_hasher
from trusthook.measure.encoding import Entry, Kind, encode_entry, rootfs_digest
from trusthook.measure.native import CacheStats, DigestCache, NativeHasher
from trusthook.measure.profile import config_digest, launch_profile, launch_profile_digest
from trusthook.measure.walk import RootfsMeasurement, measure_rootfs

__all__ = [
    "CacheStats",
    "DigestCache",
    "Entry",
    "Hasher",
    "Kind",
    "NativeHasher",
    "PythonHasher",
    "RootfsMeasurement",
    "canonicalize",
    "config_digest",
    "encode_entry",
    "launch_profile",
    "launch_profile_digest",
    "measure_rootfs",
    "rootfs_digest",
    "select_hasher",
]
