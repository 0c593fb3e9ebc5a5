"""Measurement: the canonical rootfs encoding and the config digests (docs/measurement.md)."""
