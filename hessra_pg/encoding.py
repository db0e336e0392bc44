"""Moved to hessra_pg.core.encoding in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.core import encoding as _moved

warnings.warn("hessra_pg.encoding moved to hessra_pg.core.encoding", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
