"""Tools for developers and tests: a throwaway local cluster, pytest
fixtures, the demo."""
