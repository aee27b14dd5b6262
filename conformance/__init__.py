"""refdiff's shipped conformance suite (installed as ``refdiff.conformance``)."""
