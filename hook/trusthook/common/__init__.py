"""Models and helpers shared by more than one process (agent, CLI, server, the start path).

Standard library only, except where a module says otherwise: the start path imports from here.
"""
