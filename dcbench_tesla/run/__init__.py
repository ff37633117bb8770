"""The run pipeline: resolve a request once, drive one episode loop, evaluate, record.

Modules: ``request`` (:class:`RunRequest`, :func:`resolve`), ``rundir`` (the run-directory layout and
the result schema), ``loop`` (the only episode driver), ``runner`` (``dcbench run``), ``bench`` and
``tables`` (``dcbench bench``), ``presets`` (bench presets), ``evaluate_file`` (``dcbench eval``).
"""
