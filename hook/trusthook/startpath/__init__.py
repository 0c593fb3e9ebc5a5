"""What runs on every container start: ``trusthook-hook`` and ``trusthook-runtime``.

Kept to the standard library and few imports; the start-path issue replaces both with small C
programs in ``native/`` and moves the bundle work into the agent.
"""
