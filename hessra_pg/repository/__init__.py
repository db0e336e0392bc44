"""Hessra policy repositories (clients.toml, resources.toml): checks and the
service chains they declare (client side)."""
