"""Row-Level Security policies generated from a small spec (client side)."""
