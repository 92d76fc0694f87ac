"""Token extraction, validation (introspection, JWT), the auth steps that use them, and the
registry that shares validators across config generations.
"""
