"""refdiff's conformance suite (installed as ``refdiff.conformance``): hold a backend to the oracle.

Run it as ``pytest --pyargs refdiff.conformance --refdiff-backend B``, ``refdiff verify --backend B``
or ``refdiff.verify(backend=B)``. Modules: ``plugin`` (the pytest plugin: options, fixtures,
header, report), ``cases`` (the registry of checks; ``case_*`` define them), ``check`` (the
harness), ``strategies`` (Hypothesis strategies, host-side NumPy), ``tolerances`` (the one table),
``report`` (VerifyReport and its JSON form), ``profiles`` (Hypothesis profiles). See
docs/CONFORMANCE.md. Importing this package imports nothing heavy.
"""
