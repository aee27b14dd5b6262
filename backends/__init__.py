"""refdiff backends (installed as ``refdiff.backends``)."""
