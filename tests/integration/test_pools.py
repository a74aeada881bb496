"""Pools whose configuration changes under live allocations (found by attacking the daemon; cf. field case B27).

- A network's subnet widened from /24 to /23 must not hand out an address the /24 pool still holds: address keys
  are per network and family, whatever pool (subnet) an address came from.
- Two configurations of one pool with different blockSize must not create overlapping blocks: the first claim
  fixes the pool's block size in its record.
"""

from __future__ import annotations

from harness import cni_config, run_cni


def test_widened_subnet_never_reuses_an_address_held_by_the_old_pool(daemons):
    d = daemons("A")
    old = cni_config(name="net1", subnet="10.31.0.0/24")
    wide = cni_config(name="net1", subnet="10.31.0.0/23")
    assert run_cni("ADD", old, socket=d.cni_socket, container_id="old1").ips == ["10.31.0.2/24"]
    new = run_cni("ADD", wide, socket=d.cni_socket, container_id="new1")
    assert new.rc == 0, new
    assert new.ips == ["10.31.0.3/23"]  # .2 is still old1's
    # DEL of the old attachment works with the new configuration on stdin (release by key, B27)
    assert (run_cni("DEL", wide, socket=d.cni_socket, container_id="old1").rc) == 0
    again = run_cni("ADD", wide, socket=d.cni_socket, container_id="new2")
    assert again.ips == ["10.31.0.2/23"]


def test_pool_block_size_is_fixed_by_its_first_claim(daemons):
    a = daemons("A")
    b = daemons("B")
    conf26 = cni_config(name="net1", subnet="10.33.0.0/24", blockSize=26)
    conf28 = cni_config(name="net1", subnet="10.33.0.0/24", blockSize=28)
    assert run_cni("ADD", conf26, socket=a.cni_socket, container_id="a1").ips == ["10.33.0.2/24"]
    # B asks for /28 blocks, but the pool's blocks are /26: B claims 10.33.0.64/26, never a /28 inside A's block
    assert run_cni("ADD", conf28, socket=b.cni_socket, container_id="b1").ips == ["10.33.0.64/24"]
    for i in range(3):
        out = run_cni("ADD", conf26, socket=a.cni_socket, container_id="a%d" % (i + 2))
        assert out.ips == ["10.33.0.%d/24" % (i + 3)]
    # the daemons fixture checks the invariants (no overlapping blocks, INV3) after the test


# B34's exhaustion (free-addresses gauge) and strictAffinity cases: tests/integration/test_field_ranges.py


def test_strict_affinity_must_be_a_boolean(daemons):
    d = daemons("A")
    out = run_cni("ADD", cni_config(strictAffinity="yes"), socket=d.cni_socket)
    assert out.code == 7 and "strictAffinity" in out.json["msg"]
