"""Attestation: the pure verification core shared by the server and the agent."""
