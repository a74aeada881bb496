"""Verification tools shipped with ipamd for its tests and benchmarks (docs/DEVELOPING.md): the history checker and
workload (:mod:`ipamd.testing.history`) and a TCP fault proxy (:mod:`ipamd.testing.faultproxy`). Nothing in the
daemon imports them."""
