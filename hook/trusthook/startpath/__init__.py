"""What runs on every container start: ``trusthook-runtime`` (the shim) and its bundle work.

The hook, ``trusthook-hook``, is a C program (``native/trusthook_hook.c``). Kept to the
standard library and few imports; the start-path issue replaces the shim with a C program too
and moves the bundle work into the agent.
"""
