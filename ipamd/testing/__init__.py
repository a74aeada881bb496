"""Verification tools shipped with ipamd for its tests and benchmarks (docs/DEVELOPING.md): the history checker and
workload (:mod:`ipamd.testing.history`), a TCP fault proxy (:mod:`ipamd.testing.faultproxy`) and a check that etcd's
members agree (:mod:`ipamd.testing.members`). Nothing in the
daemon imports them."""
