"""Smoke: one daemon, ADD/CHECK/DEL through the shim; invariants checked by the fixture."""

from harness import cni_config, run_cni


def test_add_check_del_roundtrip(daemons):
    d = daemons("A")
    conf = cni_config()
    out = run_cni("ADD", conf, socket=d.cni_socket)
    assert out.rc == 0, out
    assert out.ips == ["10.1.2.2/24"]
    assert run_cni("CHECK", {**conf, "prevResult": out.json}, socket=d.cni_socket).rc == 0
    d2 = run_cni("DEL", conf, socket=d.cni_socket)
    assert (d2.rc, d2.stdout) == (0, "")
