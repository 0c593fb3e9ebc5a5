"""OCI images: layouts, ocicrypt layer encryption, safe unpacking into a root."""
