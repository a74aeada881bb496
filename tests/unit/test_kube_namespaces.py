"""The namespace view's logic (ipamd/kube.py :class:`NamespaceView`, docs/configuration.md "Named pools") against a
stub of :class:`ipamd.kube.KubeApi` (no server): labels after a list, watch events applied, "unknown" (``None``)
before the first list, after a failed list or watch and for a namespace the view does not show, and a new list after
410 Gone. The real client against an API server double is tests/integration/test_named_pools.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ipamd.kube import KubeError, KubeExpired, KubeMode, KubeUnavailable, NamespaceInfo, NamespaceView

Obj = dict[str, Any]


def ns(name: str, rv: int, **labels: str) -> Obj:
    return {"metadata": {"name": name, "resourceVersion": str(rv),
                         "labels": {**labels, "kubernetes.io/metadata.name": name}}}


class StubApi:
    """``list`` answers ``listed`` (or raises ``list_error``); each ``watch`` yields the next script of events (a
    script may end by raising)."""

    def __init__(self) -> None:
        self.listed: tuple[list[Obj], str] = ([], "1")
        self.list_error: Exception | None = None
        self.scripts: list[list[tuple[str, Obj] | Exception]] = []
        self.calls: list[tuple[str, str, str]] = []

    def list(self, kind: str, field_selector: str = "") -> tuple[list[Obj], str]:
        self.calls.append(("list", kind, field_selector))
        if self.list_error is not None:
            raise self.list_error
        return self.listed

    def watch(self, kind: str, resource_version: str, field_selector: str = "", seconds: int = 60) -> Any:
        self.calls.append(("watch", kind, resource_version))
        script = self.scripts.pop(0) if self.scripts else []
        api = self

        class Stream:
            def __iter__(self) -> Iterator[tuple[str, Obj]]:
                for step in script:
                    if isinstance(step, Exception):
                        raise step
                    yield step

            def stop(self) -> None:
                api.calls.append(("stop", kind, ""))

        return Stream()


def view(api: StubApi) -> NamespaceView:
    return NamespaceView(api, 5)  # type: ignore[arg-type]


def test_labels_after_list_and_watch_events() -> None:
    api = StubApi()
    api.listed = ([ns("a1", 5, team="a"), ns("b1", 6, team="b")], "10")
    api.scripts = [[("MODIFIED", ns("a1", 11, team="b")), ("ADDED", ns("new", 12, team="a")),
                    ("DELETED", ns("b1", 13, team="b")), ("BOOKMARK", {"metadata": {"resourceVersion": "20"}})],
                   []]
    v = view(api)
    assert v.labels("a1") is None and not v.current  # not listed yet: unknown
    assert v.round() == 0.0
    assert api.calls[:2] == [("list", "namespaces", ""), ("watch", "namespaces", "10")]
    assert v.current
    assert v.labels("a1") == {"team": "b", "kubernetes.io/metadata.name": "a1"}
    assert v.labels("new") == {"team": "a", "kubernetes.io/metadata.name": "new"}
    assert v.labels("b1") is None  # deleted
    assert v.labels("never") is None  # not shown (yet): unknown, not "no labels"
    v.round()
    assert api.calls[-1] == ("watch", "namespaces", "20")  # resumed from the bookmark, no new list
    assert sum(1 for c in api.calls if c[0] == "list") == 1


def test_the_name_label_is_always_there() -> None:
    api = StubApi()
    api.listed = ([{"metadata": {"name": "bare", "resourceVersion": "3"}},
                   {"metadata": {"name": "liar", "labels": {"kubernetes.io/metadata.name": "other", "x": "1"}}}], "4")
    v = view(api)
    v.round()
    assert v.labels("bare") == {"kubernetes.io/metadata.name": "bare"}
    assert v.labels("liar") == {"kubernetes.io/metadata.name": "liar", "x": "1"}


def test_unknown_while_the_api_fails_and_known_again_after_a_new_list() -> None:
    api = StubApi()
    api.listed = ([ns("a1", 5, team="a")], "10")
    api.scripts = [[KubeUnavailable("watch namespaces: API server unreachable")]]
    v = view(api)
    with pytest.raises(KubeUnavailable):
        v.round()
    assert not v.current and v.labels("a1") is None  # a broken watch: the labels may be stale, so unknown
    api.list_error = KubeUnavailable("list namespaces: API server unreachable")
    with pytest.raises(KubeUnavailable):
        v.round()
    assert v.labels("a1") is None
    api.list_error = None
    api.listed = ([ns("a1", 30, team="c")], "31")
    v.round()
    assert v.current and v.labels("a1") == {"team": "c", "kubernetes.io/metadata.name": "a1"}


def test_410_gone_lists_again() -> None:
    api = StubApi()
    api.listed = ([ns("a1", 5, team="a")], "10")
    api.scripts = [[KubeExpired("watch namespaces from 10: HTTP 410 too old")], []]
    v = view(api)
    assert v.round() == 0.0  # not an error
    assert v.expired == 1 and v.labels("a1") is None
    api.listed = ([ns("a1", 40, team="z")], "41")
    v.round()
    assert v.lists == 2 and v.labels("a1") == {"team": "z", "kubernetes.io/metadata.name": "a1"}


def test_malformed_namespace_is_a_kube_error() -> None:
    with pytest.raises(KubeError, match=r"namespace without metadata\.name"):
        NamespaceInfo.from_obj({"metadata": {"labels": {}}})
    assert NamespaceInfo.from_obj({"metadata": {"name": "n", "labels": ["not", "a", "map"]}}).labels == ()


def test_kube_mode_runs_the_namespace_loop_and_closes_it() -> None:
    api = StubApi()
    mode = KubeMode(api, "n1")  # type: ignore[arg-type]
    assert "kube-namespaces" in dict(mode.loops())
    mode.namespaces.round()
    assert mode.namespaces.current
    api_close: list[bool] = []
    api.close = lambda: api_close.append(True)  # type: ignore[attr-defined]
    mode.close()
    assert not mode.namespaces.current and api_close == [True]
