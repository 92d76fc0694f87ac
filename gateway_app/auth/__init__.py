"""Token extraction, validation (introspection, JWT) and the auth steps that use them."""
