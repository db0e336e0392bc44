"""``python -m hessra_pg``: the same as the ``hessra-pg`` command."""

from hessra_pg.cli import main

raise SystemExit(main())
