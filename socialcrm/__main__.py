"""``python -m socialcrm``: the same as the ``socialcrm`` command."""

from socialcrm.cli import main

main()
