"""``python -m dcbench_tesla``: the ``dcbench`` command line."""

from dcbench_tesla.cli import main

if __name__ == "__main__":
    main(prog_name="dcbench")
