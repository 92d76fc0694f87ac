"""Traefik Hub resources (IngressRoute, Middleware) translated into the gateway's routes and auth steps."""
