"""Property test (issue: complete CNI conformance, item 6): random ADD/DEL/CHECK/GC sequences against a real
daemon, real etcd and real shim processes, checked after every step against a simple model and the invariants.

Model: per network, attachment -> address. A /29 pool (usable .2-.6, one block) makes allocation exact: ADD takes
the lowest usable address nobody holds, a repeated ADD returns the held address, a full pool answers 100; DEL and
GC release exactly what the model says.
"""

from __future__ import annotations

import ipaddress
import json
import uuid

from harness import assert_invariants, cni_config, run_cni
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ipamd.store.etcd import EtcdStore

NETWORKS = ("pa", "pb")
CONTAINERS = ("c1", "c2", "c3", "c4", "c5", "c6")
IFNAMES = ("eth0", "net1")
SUBNETS = {"pa": "10.77.0.0/29", "pb": "10.77.0.0/29"}  # same subnet, independent pools (T38)
USABLE = [str(ipaddress.ip_address("10.77.0.0") + i) for i in range(2, 7)]

attachments = st.tuples(st.sampled_from(NETWORKS), st.sampled_from(CONTAINERS), st.sampled_from(IFNAMES))


def test_random_sequences_match_model(daemons):
    d = daemons("A")

    class Machine(RuleBasedStateMachine):
        @initialize()
        def fresh_networks(self) -> None:
            tag = uuid.uuid4().hex[:6]
            self.names = {n: "%s-%s" % (n, tag) for n in NETWORKS}
            self.model: dict[str, dict[tuple[str, str], str]] = {n: {} for n in NETWORKS}

        def conf(self, net: str) -> dict:
            return cni_config(name=self.names[net], subnet=SUBNETS[net])

        @rule(att=attachments)
        def add(self, att) -> None:
            net, cid, ifn = att
            out = run_cni("ADD", self.conf(net), socket=d.cni_socket, container_id=cid, if_name=ifn)
            held = self.model[net]
            if (cid, ifn) in held:
                assert out.rc == 0, out
                assert out.ips == [held[(cid, ifn)] + "/29"]
                return
            free = [a for a in USABLE if a not in held.values()]
            if not free:
                assert (out.rc, out.code) == (1, 100), out
                return
            assert out.rc == 0, out
            assert out.ips == [free[0] + "/29"], (out, held)
            held[(cid, ifn)] = free[0]

        @rule(att=attachments)
        def delete(self, att) -> None:
            net, cid, ifn = att
            out = run_cni("DEL", self.conf(net), socket=d.cni_socket, container_id=cid, if_name=ifn)
            assert (out.rc, out.stdout) == (0, ""), out
            self.model[net].pop((cid, ifn), None)

        @rule(att=attachments)
        def check(self, att) -> None:
            net, cid, ifn = att
            out = run_cni("CHECK", self.conf(net), socket=d.cni_socket, container_id=cid, if_name=ifn)
            if (cid, ifn) in self.model[net]:
                assert (out.rc, out.stdout) == (0, ""), out
            else:
                assert (out.rc, out.code) == (1, 102), out

        @rule(net=st.sampled_from(NETWORKS), keep=st.sets(st.tuples(st.sampled_from(CONTAINERS),
                                                                    st.sampled_from(IFNAMES)), max_size=4))
        def gc(self, net, keep) -> None:
            conf = dict(self.conf(net))
            conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
            out = run_cni("GC", conf, socket=d.cni_socket, container_id=None, if_name=None, netns=None)
            assert (out.rc, out.stdout) == (0, ""), out
            self.model[net] = {k: v for k, v in self.model[net].items() if k in keep}

        @invariant()
        def etcd_matches_model(self) -> None:
            if not hasattr(self, "names"):
                return
            store = EtcdStore(d.endpoints, d.prefix)
            try:
                for net in NETWORKS:
                    prefix = "handles/%s/" % self.names[net]
                    kvs, _ = store.read(prefix, prefix[:-1] + "0", 5.0)
                    got = {}
                    for kv in kvs:
                        cid, ifn = kv.key[len(prefix):].split("/")
                        got[(cid, ifn)] = json.loads(kv.value)["ips"][0]["address"].split("/")[0]
                    assert got == self.model[net], (net, got, self.model[net])
            finally:
                store.close()
            assert_invariants(d.endpoints, d.prefix)

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=12, stateful_step_count=12, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
