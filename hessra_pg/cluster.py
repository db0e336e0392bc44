"""Moved to hessra_pg.dev.cluster in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.dev import cluster as _moved

warnings.warn("hessra_pg.cluster moved to hessra_pg.dev.cluster", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
