"""Moved to hessra_pg.dev.testing in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.dev import testing as _moved

warnings.warn("hessra_pg.testing moved to hessra_pg.dev.testing", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
