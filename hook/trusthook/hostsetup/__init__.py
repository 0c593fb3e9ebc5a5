"""Setting up a host: ``trusthook runtime configure|unconfigure`` (merge trusthook into a
container engine's own configuration) and ``trusthook doctor`` (check a host the way a support
engineer would). docs/deploy.md describes both.

``engines``, ``containers_conf`` and ``tomledit`` are pure (file text in, file text out);
``configure`` does the file I/O; ``doctor`` runs the checks.
"""
