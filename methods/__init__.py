"""Built-in methods, registered through the ``dcbench_tesla.methods`` entry points exactly as plugins are.

Installed as the package ``dcbench_tesla_methods`` (``methods/`` in the source tree).
"""
