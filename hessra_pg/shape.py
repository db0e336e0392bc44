"""Moved to hessra_pg.core.shape in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.core import shape as _moved

warnings.warn("hessra_pg.shape moved to hessra_pg.core.shape", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
