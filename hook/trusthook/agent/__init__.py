"""The node agent: holds the TPM, measures launches, writes the event log."""
