"""``python -m dcbench_tesla`` runs the ``dcbench`` command line."""

from dcbench_tesla.cli import main

main()
