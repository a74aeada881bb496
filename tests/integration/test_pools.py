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


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        return resp.read().decode()


def _gauge(text: str, name: str, pool: str) -> float | None:
    for line in text.splitlines():
        if line.startswith('%s{pool="%s"}' % (name, pool)):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_b34_free_addresses_gauge_reads_zero_when_the_pool_is_full(daemons):
    """B34: subnet 10.79.0.0/29 (usable .2-.6): after five ADDs the sixth is 100, and the free-addresses gauge
    reads 0 (5 allocated); after a DEL it reads 1."""
    from ipamd.embedded import free_port

    port = free_port()
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config(name="net1", subnet="10.79.0.0/29")
    for i in range(1, 6):
        assert run_cni("ADD", conf, socket=d.cni_socket, container_id="c%d" % i).rc == 0
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="c6").code == 100
    pool = "net1/0a4f0000-29"
    text = _scrape(port)
    assert _gauge(text, "ipamd_pool_free_addresses", pool) == 0.0, text
    assert _gauge(text, "ipamd_pool_allocated_addresses", pool) == 5.0
    assert run_cni("DEL", conf, socket=d.cni_socket, container_id="c3").rc == 0
    assert _gauge(_scrape(port), "ipamd_pool_free_addresses", pool) == 1.0


def test_b34_strict_affinity_refuses_to_borrow_and_says_what_is_free_elsewhere(daemons):
    """B34 (decision 5): subnet 10.80.0.0/27, blockSize 28. A fills its block 10.80.0.0/28 (14 usable), B claims
    10.80.0.16/28 with one ADD. With strictAffinity one more ADD on A is 100 whose details count the 14 free
    addresses left in B's block (15 usable, .16 taken); without it, A borrows one from B's block."""
    a = daemons("A")
    b = daemons("B")
    strict = cni_config(name="net1", subnet="10.80.0.0/27", blockSize=28, strictAffinity=True)
    for i in range(14):
        assert run_cni("ADD", strict, socket=a.cni_socket, container_id="a%d" % i).rc == 0
    assert run_cni("ADD", strict, socket=b.cni_socket, container_id="b0").ips == ["10.80.0.16/27"]
    out = run_cni("ADD", strict, socket=a.cni_socket, container_id="a14")
    assert out.code == 100, out
    assert "strictAffinity" in out.json["msg"]
    assert "14 free address(es) in blocks owned by other nodes" in out.json["details"], out.json
    loose = cni_config(name="net1", subnet="10.80.0.0/27", blockSize=28)
    borrowed = run_cni("ADD", loose, socket=a.cni_socket, container_id="a14")
    assert borrowed.ips == ["10.80.0.17/27"], borrowed


def test_strict_affinity_must_be_a_boolean(daemons):
    d = daemons("A")
    out = run_cni("ADD", cni_config(strictAffinity="yes"), socket=d.cni_socket)
    assert out.code == 7 and "strictAffinity" in out.json["msg"]
