"""Use cases: new (and later sign, accept, repair), each all-or-nothing."""
