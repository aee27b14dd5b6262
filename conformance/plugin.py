"""pytest plugin of the conformance suite (inert until a refdiff option or fixture is used)."""
