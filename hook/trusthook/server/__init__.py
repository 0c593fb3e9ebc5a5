"""The attestation server (``trusthook server``): enrollment, verification, host trust."""
