"""Tools an operator runs against a server: install the extension and the
server-side Python, and `doctor`."""
