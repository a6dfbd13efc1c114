"""A Kubernetes API server for tests, speaking real HTTP to the ``kubernetes`` client and kubectl.

See :class:`TestAPIServer`. Storage and write rules live in :mod:`.store`; this module routes
requests, negotiates Tables for kubectl, streams watches and applies fault rules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from workspace_fsm.testing.errors import APIError, dumps
from workspace_fsm.testing.faults import Faults, RequestCounts, RequestInfo
from workspace_fsm.testing.listing import (EXPIRED_LIST, INCONSISTENT_CONTINUE, encode_continue, parse_list_request,
                                           parse_rv, storage_key, too_large_rv)
from workspace_fsm.testing.meta import cause
from workspace_fsm.testing.options import delete_options, write_options
from workspace_fsm.testing.patch import PatchError, PatchFormatError, json_patch, merge_patch
from workspace_fsm.testing.scale import apply_scale, to_scale
from workspace_fsm.testing.ssa import manager_from_user_agent
from workspace_fsm.testing.resources import ResourceInfo
from workspace_fsm.testing.selectors import SelectorError, parse_field_selector, parse_label_selector
from workspace_fsm.testing.store import Event, Store, parse_patch_type
from workspace_fsm.testing.table import partial_metadata, to_table

__all__ = ["Denial", "TestAPIServer"]

log = logging.getLogger(__name__)

KUBERNETES_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc",
    "platform": "linux/amd64",
}


class _ClientGone(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Denial:
    """A request answered 401 or 403: who (``""`` for an unknown token), what, and the answer's message."""

    user: str
    verb: str
    resource: str  # "workspaces", "workspaces/status", or a non-resource path
    namespace: str | None
    name: str | None
    code: int
    message: str


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: TestAPIServer) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        import ssl

        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)) or self.app._stopping:
            return  # a client that went away, a failed TLS handshake, or a connection closed by stop()
        log.exception("test API server: error serving %s", client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Without this, a response written as headers + body waits for the client's delayed ACK
        # (Nagle): ~40 ms per request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "workspace-fsm-test-apiserver"
    sys_version = ""
    server: _HTTPServer
    intercept_after: Any = None  # (rules, request) to run once this request is handled
    user: Any = None  # the authenticated user of the request being handled (None without authentication)
    query_lists: dict[str, list[str]] = {}  # every value of every query parameter

    def setup(self) -> None:
        do_handshake = getattr(self.request, "do_handshake", None)
        if do_handshake is not None:  # TLS: the handshake runs in this connection's thread
            self.request.settimeout(10)
            do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.server.app._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802
        self.server.app._handle(self, "GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.app._handle(self, "HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self.server.app._handle(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.server.app._handle(self, "PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self.server.app._handle(self, "PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.app._handle(self, "DELETE")


class _Route:
    __slots__ = ("info", "version", "namespace", "name", "subresource")

    def __init__(self, info: ResourceInfo, version: str, namespace: str | None, name: str | None,
                 subresource: str | None) -> None:
        self.info, self.version, self.namespace, self.name, self.subresource = (
            info, version, namespace, name, subresource)


def _is_table(accept: str) -> bool:
    first = accept.split(",")[0] if accept else ""
    return "as=Table" in first and "g=meta.k8s.io" in first


def _is_partial(accept: str) -> bool:
    first = accept.split(",")[0] if accept else ""
    return "as=PartialObjectMetadata" in first


class TestAPIServer:
    """An in-process Kubernetes API server over HTTP/1.1 for tests.

    ``crds`` are CRD documents (dicts) or paths of YAML files holding CRDs. ``history`` bounds the
    watch event history (older resourceVersions get 410 Gone); ``seed`` makes resourceVersions,
    uids and generated names reproducible; ``gc`` runs the garbage collector (ownerReferences,
    Foreground/Orphan deletion, namespace termination) ``gc_delay`` seconds after writes;
    ``bookmark_interval`` is how often watches that allow bookmarks get one. ``request_timeout``, like
    kube-apiserver's ``--request-timeout``: a request other than a watch that is not applied within that
    many seconds of its arrival (an injected latency) is answered 504 and never applied. That is stricter
    than a real server, whose storage write may still finish; it makes "a create lands within the request
    timeout or never" a property of this server that tests can rely on.
    ``tls`` (default on, as every real API server): serve HTTPS with a certificate signed by a CA minted for
    the process (written into the kubeconfig and :attr:`client_configuration`; :meth:`connection` and
    :meth:`urlopen` for raw requests); ``tls=False`` serves plain HTTP. ``auth`` (default on): authenticate
    bearer tokens (the kubeconfig's is an admin in ``system:masters``; :meth:`add_token` and
    :meth:`service_account_token` make others; no token is ``system:anonymous``) and authorize requests with
    RBAC from the stored Roles, ClusterRoles and bindings (see :mod:`workspace_fsm.testing.auth`); every
    denial is kept in :attr:`denials`. ``auth=False`` admits every request.
    ``too_large_rv_wait``: how long a get or list asking for a resourceVersion newer than the store waits for
    it before the 504 "Too large resource version" (the watch cache waits 3 s).

    Use as a context manager or with :meth:`start`/:meth:`stop`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, crds: Iterable[Mapping[str, Any] | str | os.PathLike[str]] = (), *, host: str = "127.0.0.1",
                 port: int = 0, history: int = 1000, seed: int | None = None, gc: bool = True,
                 gc_delay: float = 0.02, bookmark_interval: float = 5.0, max_watch_seconds: float = 1800.0,
                 request_timeout: float | None = 60.0, too_large_rv_wait: float = 3.0,
                 tls: bool = True, auth: bool = True,
                 namespaces: Iterable[str] = ("default", "kube-system", "kube-public", "kube-node-lease")) -> None:
        self.store = Store(history=history, seed=seed, gc=gc, gc_delay=gc_delay, namespaces=namespaces)
        self.faults = Faults()
        self.faults.compact_hook = self.compact
        self.requests = RequestCounts()
        self.bookmark_interval = float(bookmark_interval)
        self.max_watch_seconds = float(max_watch_seconds)
        self.request_timeout = request_timeout
        self.too_large_rv_wait = float(too_large_rv_wait)
        self.tls = bool(tls)
        self.auth = bool(auth)
        self._tls_material: Any = None
        self.admin_token = "workspace-fsm-test"
        self._tokens: dict[str, Any] = {}
        from workspace_fsm.testing.auth import RBAC, User

        self._tokens[self.admin_token] = User("workspace-fsm-test", ("system:masters", "system:authenticated"))
        self.rbac = RBAC(self.store)
        self.denials: list[Denial] = []  # every 401/403 answered, in order
        self._denials_lock = threading.Lock()
        self.requests_by_user: Counter[tuple[str, str, str]] = Counter()  # (user, verb, resource) -> requests
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stopping = False
        for crd in crds:
            if isinstance(crd, Mapping):
                self.register_crd(crd)
            else:
                self.load_crds_from_yaml(crd)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TestAPIServer:
        if self._httpd is not None:
            return self
        self._stopping = False
        self._httpd = _HTTPServer((self._host, self._port), self)
        self._port = self._httpd.server_address[1]
        material = self._tls()
        if material is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(material.cert_file, material.key_file)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"test-apiserver-{self._port}", daemon=True)
        self._thread.start()
        self.store.start_gc()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping = True
        with self.store.cond:
            self.store.cond.notify_all()
        self._httpd.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.stop_gc()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> TestAPIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._host}:{self._port}"

    def _tls(self) -> Any:
        """The serving certificate and its CA (minted once per process and host), None for plain HTTP."""
        if not self.tls:
            return None
        if self._tls_material is None:
            from workspace_fsm.testing.auth import mint_tls

            self._tls_material = mint_tls((self._host, "localhost"))
        return self._tls_material

    @property
    def ca_file(self) -> str | None:
        """The CA certificate file (PEM) when serving TLS."""
        material = self._tls()
        return material.ca_file if material is not None else None

    def ssl_context(self) -> Any:
        """A client ``ssl.SSLContext`` trusting this server's CA (None for plain HTTP)."""
        import ssl

        material = self._tls()
        return None if material is None else ssl.create_default_context(cafile=material.ca_file)

    def connection(self, timeout: float = 10.0, *, token: str | None = "admin") -> Any:
        """An ``http.client`` connection to this server (HTTPS verified against its CA, or HTTP) that sends
        the admin's bearer token with every request (``token``: another token; None: anonymous)."""
        import http.client

        header = None if token is None else f"Bearer {self.admin_token if token == 'admin' else token}"
        base: Any = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
        extra = {"context": self.ssl_context()} if self.tls else {}

        class _Connection(base):  # type: ignore[misc, valid-type]
            def putrequest(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
                super().putrequest(method, url, *args, **kwargs)
                if header is not None:
                    self.putheader("Authorization", header)

        return _Connection(self._host, self._port, timeout=timeout, **extra)

    def urlopen(self, request: Any, *, timeout: float = 10.0, token: str | None = "admin") -> Any:
        """``urllib.request.urlopen`` of a path (``"/version"``) or a ``Request`` for this server, verified
        against its CA, with the admin's bearer token unless the request carries one (``token`` as in
        :meth:`connection`)."""
        import urllib.request

        if isinstance(request, str):
            request = urllib.request.Request(request if "://" in request else self.url + request)
        if token is not None and not request.has_header("Authorization"):
            request.add_header("Authorization", f"Bearer {self.admin_token if token == 'admin' else token}")
        return urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context())

    def _deny(self, user: Any, exc: APIError, verb: str, resource: str, namespace: str | None,
              name: str | None) -> APIError:
        with self._denials_lock:
            self.denials.append(Denial(user.name if user is not None else "", verb, resource, namespace, name,
                                       exc.code, exc.message))
        return exc

    def add_token(self, token: str, user: str, groups: Iterable[str] = ()) -> None:
        """Authenticate ``token`` as ``user`` (with ``groups`` and ``system:authenticated``)."""
        from workspace_fsm.testing.auth import User

        self._tokens[token] = User(user, tuple(dict.fromkeys([*groups, "system:authenticated"])))

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for the ServiceAccount ``namespace/name`` (its user and groups as the real
        ServiceAccount authenticator gives them)."""
        token = f"sa-{namespace}-{name}-{self.store.rng.getrandbits(64):016x}"
        self.add_token(token, f"system:serviceaccount:{namespace}:{name}",
                       ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"])
        return token

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # ------------------------------------------------------------------ public helpers

    def write_kubeconfig(self, path: str | os.PathLike[str], *, namespace: str = "default",
                         context: str = "workspace-fsm-test", token: str | None = None) -> Path:
        """Write a kubeconfig for this server (one context; the CA when serving TLS; ``token``: another bearer
        token than the admin's) and return its path."""
        import base64

        cluster: dict[str, Any] = {"server": self.url}
        material = self._tls()
        if material is not None:
            cluster["certificate-authority-data"] = base64.b64encode(material.ca_pem).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                        "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
        return out

    def client_configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        material = self._tls()
        if material is not None:
            cfg.ssl_ca_cert = material.ca_file
        cfg.api_key = {"authorization": self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` talking to this server (close it when done)."""
        from kubernetes import client

        return client.ApiClient(self.client_configuration())

    def register_crd(self, crd_doc: Mapping[str, Any]) -> ResourceInfo:
        """Serve a CustomResourceDefinition (as if created through the API); replaces an existing one."""
        return self.store.register_crd(dict(crd_doc))

    def load_crds_from_yaml(self, path: str | os.PathLike[str]) -> list[ResourceInfo]:
        """Register every CustomResourceDefinition in a (multi-document) YAML file."""
        out = []
        with open(path, encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    out.append(self.register_crd(doc))
        if not out:
            raise ValueError(f"no CustomResourceDefinition in {path}")
        return out

    def compact(self) -> int:
        """Forget the watch history: a watch from any earlier resourceVersion gets 410 Gone.
        Returns the revision compacted at."""
        return self.store.compact()

    @property
    def resource_version(self) -> str:
        """The current (global) resourceVersion."""
        return str(self.store.revision)

    def wait_for_gc(self, timeout: float = 5.0) -> bool:
        """Wait until the garbage collector has nothing left to do."""
        return self.store.wait_for_gc(timeout)

    def resource(self, group: str, plural: str) -> ResourceInfo | None:
        return self.store.registry.get(group, plural)

    def get_object(self, api_version: str, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """A copy of a stored object, bypassing HTTP, faults and counters (None if absent)."""
        group, _, version = api_version.rpartition("/")
        info = self.store.registry.lookup(group, version, plural)
        if info is None:
            raise KeyError(f"{plural} not served in {api_version}")
        with self.store.lock:
            obj = self.store.get_stored(info, namespace, name)
            return None if obj is None else self.store.render(info, obj, version)

    # ------------------------------------------------------------------ request handling

    def _handle(self, h: _Handler, method: str) -> None:
        h.intercept_after = None
        url = urlsplit(h.path)
        h.query_lists = parse_qs(url.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in h.query_lists.items()}
        try:
            body = self._read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        try:
            self._dispatch(h, method, url.path, query, body)
        except APIError as exc:
            self._send(h, exc.code, exc.body(), exc.headers)
        except _ClientGone:
            h.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception as exc:  # pragma: no cover - a bug in the server: answer 500, keep serving
            log.exception("test API server: %s %s failed", method, h.path)
            err = APIError.internal(f"{type(exc).__name__}: {exc}")
            try:
                self._send(h, err.code, err.body())
            except OSError:
                h.close_connection = True

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if (h.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size_line = h.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(parts)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length > 0 else b""

    def _send(self, h: _Handler, code: int, obj: Any, headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        data = obj if isinstance(obj, bytes) else dumps(obj)
        pending = getattr(h, "intercept_after", None)
        if pending is not None:  # intercepts "after": the request is handled, its answer not yet sent
            h.intercept_after = None
            rules, req = pending
            req = dataclasses.replace(req, status_code=code)
            if any([rule.callback(req) == "abort" for rule in rules]):
                h.close_connection = True
                return
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if h.command == "HEAD":
            h.end_headers()
            return
        buf = getattr(h, "_headers_buffer", None)
        if isinstance(buf, list):  # one write for headers and body
            buf.append(b"\r\n")
            buf.append(data)
            h.flush_headers()
        else:  # pragma: no cover
            h.end_headers()
            h.wfile.write(data)

    # ------------------------------------------------------------------ routing

    def _dispatch(self, h: _Handler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        arrived = time.monotonic()
        parts = [p for p in path.split("/") if p]
        try:
            user = self._authenticate(h)
        except APIError as exc:
            raise self._deny(None, exc, method.lower(), path, None, None) from None
        h.user = user
        if parts[:3] == ["apis", "authorization.k8s.io", "v1"] and len(parts) == 4 and parts[3] in (
                "selfsubjectaccessreviews", "subjectaccessreviews"):
            self._access_review(h, method, parts[3], body, user)
            return
        discovery = bool(parts) and ((parts[0] == "api" and len(parts) <= 2)
                                     or (parts[0] == "apis" and len(parts) <= 3))
        if not parts or parts[0] not in ("api", "apis") or discovery:
            public = "/" + "/".join(parts) in ("/version", "/healthz", "/livez", "/readyz")  # system:public-info-viewer
            if user is not None and not public and not self.rbac.allowed(user, method.lower(), "", "", None, None,
                                                                         None, resource_request=False)[0]:
                from workspace_fsm.testing.auth import forbidden

                raise self._deny(user, forbidden(user, method.lower(), "", "", None, None, None,
                                                 "/" + "/".join(parts), False), method.lower(), path, None, None)
        if not parts or parts[0] not in ("api", "apis"):
            self._non_resource(h, method, parts)
            return
        registry = self.store.registry
        if parts[0] == "api":
            if len(parts) == 1:
                self._discovery(h, method, "/api", registry.api_versions(f"{self._host}:{self._port}"))
                return
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                self._discovery(h, method, "/apis", registry.api_group_list())
                return
            group = parts[1]
            if len(parts) == 2:
                doc = registry.api_group(group)
                if doc is None:
                    raise APIError.path_not_found()
                self._discovery(h, method, "/apis", dict(doc, kind="APIGroup", apiVersion="v1"))
                return
            version, rest = parts[2], parts[3:]
        if not rest:
            doc = registry.resource_list(group, version)
            if doc is None:
                raise APIError.path_not_found()
            self._discovery(h, method, "/apis" if group else "/api", doc)
            return
        route = self._route(group, version, rest)
        verb = self._verb(method, route, query)
        if user is not None:
            self._authorize(user, verb, route)
            self.requests_by_user[(user.name, verb, f"{route.info.plural}/{route.subresource}" if route.subresource
                                   else route.info.plural)] += 1
        req = RequestInfo(verb=verb, resource=route.info.plural, subresource=route.subresource,
                          group=route.info.group, namespace=route.namespace, name=route.name,
                          user_agent=h.headers.get("User-Agent") or "", body=body)
        self.requests.add(verb, req.resource_path)
        plan = self.faults.plan(req)
        for rule in plan.before:
            if rule.callback(req) == "abort":
                raise _ClientGone()  # the request is dropped unanswered and unapplied
        plan.notify(req)
        if plan.after:
            h.intercept_after = (plan.after, req)
        if plan.delay > 0:
            time.sleep(plan.delay)
        if self.request_timeout is not None and verb != "watch" and time.monotonic() - arrived > self.request_timeout:
            raise APIError(504, "Timeout", f"the request did not complete within {self.request_timeout:g}s and "
                                           f"was not applied")
        if plan.compact:
            self.compact()
        if plan.error is not None:
            raise self._fault_error(plan.error, route)
        handler = getattr(self, f"_do_{verb}")
        self.store.set_manager(None)
        try:
            handler(h, route, query, body, plan)
        finally:
            self.store.set_manager(None)

    def _authorize(self, user: Any, verb: str, route: _Route) -> None:
        """403 unless RBAC allows ``verb`` on the route's resource for ``user``."""
        ok, _ = self.rbac.allowed(user, verb, route.info.group, route.info.plural, route.subresource,
                                  route.namespace, route.name)
        if not ok:
            from workspace_fsm.testing.auth import forbidden

            resource = f"{route.info.plural}/{route.subresource}" if route.subresource else route.info.plural
            raise self._deny(user, forbidden(user, verb, route.info.group, route.info.plural, route.subresource,
                                             route.namespace, route.name, "", True),
                             verb, resource, route.namespace, route.name)

    def _authenticate(self, h: _Handler) -> Any:
        """The request's user (None when authentication is off); 401 for a missing or unknown token."""
        if not self.auth:
            return None
        header = h.headers.get("Authorization") or ""
        if not header:  # anonymous requests are on by default: system:anonymous, system:unauthenticated
            from workspace_fsm.testing.auth import User

            return User("system:anonymous", ("system:unauthenticated",))
        scheme, _, token = header.partition(" ")
        user = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            from workspace_fsm.testing.auth import unauthorized

            raise unauthorized()
        return user

    def _access_review(self, h: _Handler, method: str, kind: str, body: bytes, user: Any) -> None:
        """SelfSubjectAccessReview / SubjectAccessReview: the authorizer's decision, nothing stored."""
        from workspace_fsm.testing.auth import User, forbidden

        if method != "POST":
            raise APIError.method_not_allowed()
        doc = self._parse_body(h, body)
        if not isinstance(doc, dict):
            raise APIError.bad_request("the body of the request must be an object")
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        if kind == "subjectaccessreviews":
            if user is not None and not self.rbac.allowed(user, "create", "authorization.k8s.io",
                                                          "subjectaccessreviews", None, None, None)[0]:
                raise self._deny(user, forbidden(user, "create", "authorization.k8s.io", "subjectaccessreviews",
                                                 None, None, None, "", True),
                                 "create", "subjectaccessreviews", None, None)
            subject = User(str(spec.get("user") or ""), tuple(spec.get("groups") or ()))
        else:
            subject = user if user is not None else User("workspace-fsm-test", ("system:masters",))
        attrs = spec.get("resourceAttributes")
        if isinstance(attrs, dict):
            allowed, reason = self.rbac.allowed(subject, str(attrs.get("verb") or ""), str(attrs.get("group") or ""),
                                                str(attrs.get("resource") or ""), attrs.get("subresource") or None,
                                                attrs.get("namespace") or None, attrs.get("name") or None)
        else:
            allowed, reason = self.rbac.allowed(subject, str((spec.get("nonResourceAttributes") or {}).get("verb")
                                                             or "get"), "", "", None, None, None,
                                                resource_request=False)
        if not self.auth:
            allowed, reason = True, ""
        status: dict[str, Any] = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        out = {"kind": "SelfSubjectAccessReview" if kind == "selfsubjectaccessreviews" else "SubjectAccessReview",
               "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": None},
               "spec": spec, "status": status}
        self._send(h, 201, out)

    def _route(self, group: str, version: str, rest: list[str]) -> _Route:
        registry = self.store.registry
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and registry.lookup(group, version, rest[2]) is not None:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise APIError.path_not_found()
        info = registry.lookup(group, version, rest[0])
        if info is None:
            raise APIError.path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if namespace is not None and not info.namespaced:
            raise APIError.path_not_found()
        if info.namespaced and namespace is None and name is not None:
            raise APIError.path_not_found()
        if sub is not None and not ((sub == "status" and info.has_status(version))
                                    or (sub == "scale" and info.scale_for(version))):
            raise APIError.path_not_found()
        return _Route(info, version, namespace, name, sub)

    @staticmethod
    def _verb(method: str, route: _Route, query: dict[str, str]) -> str:
        watch = query.get("watch", "").lower() in ("true", "1")
        if method in ("GET", "HEAD"):
            if watch:
                if route.subresource:
                    raise APIError.method_not_allowed()
                return "watch"
            return "get" if route.name else "list"
        if route.subresource and method not in ("PUT", "PATCH"):
            raise APIError.method_not_allowed()
        if method == "POST":
            if route.name:
                raise APIError.method_not_allowed()
            return "create"
        if method == "PUT":
            if not route.name:
                raise APIError.method_not_allowed()
            return "update"
        if method == "PATCH":
            if not route.name:
                raise APIError.method_not_allowed()
            return "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        raise APIError.method_not_allowed()

    @staticmethod
    def _fault_error(fault: Any, route: _Route) -> APIError:
        if fault.kind == "conflict":
            return APIError.conflict(route.info, route.name or "")
        if fault.kind == "throttle":
            return APIError.too_many_requests(fault.retry_after)
        code = int(fault.code)
        if code == 500:
            return APIError.internal(fault.message)
        reasons = {503: "ServiceUnavailable", 504: "Timeout", 502: "InternalError", 401: "Unauthorized",
                   403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid", 410: "Expired"}
        return APIError(code, reasons.get(code, "InternalError"), fault.message, {})

    # ------------------------------------------------------------------ discovery and other paths

    def _discovery(self, h: _Handler, method: str, family: str, doc: dict[str, Any]) -> None:
        if method not in ("GET", "HEAD"):
            raise APIError.method_not_allowed()
        self.requests.add("discovery", family)
        self._send(h, 200, doc)

    def _non_resource(self, h: _Handler, method: str, parts: list[str]) -> None:
        if method not in ("GET", "HEAD"):
            raise APIError.path_not_found()
        path = "/" + "/".join(parts)
        if path == "/version":
            self.requests.add("discovery", "/version")
            self._send(h, 200, KUBERNETES_VERSION)
            return
        if path in ("/healthz", "/livez", "/readyz"):
            self._send(h, 200, b"ok", content_type="text/plain; charset=utf-8")
            return
        if parts == ["openapi", "v2"]:
            accept = h.headers.get("Accept") or ""
            if accept and "json" not in accept and "*/*" not in accept:
                raise APIError.path_not_found()  # protobuf only (client-go asks for that first): not served
            self.requests.add("discovery", "/openapi")
            self._send(h, 200, self.store.registry.openapi_v2())
            return
        if parts[:2] == ["openapi", "v3"]:
            self.requests.add("discovery", "/openapi")
            registry = self.store.registry
            if len(parts) == 2:
                self._send(h, 200, registry.openapi_index())
                return
            rest = parts[2:]
            doc = None
            if rest[0] == "api" and len(rest) == 2:
                doc = registry.openapi_gv("", rest[1])
            elif rest[0] == "apis" and len(rest) == 3:
                doc = registry.openapi_gv(rest[1], rest[2])
            if doc is None:
                raise APIError.path_not_found()
            self._send(h, 200, doc)
            return
        raise APIError.path_not_found()

    # ------------------------------------------------------------------ reading

    def _view(self, route: _Route, obj: dict[str, Any]) -> dict[str, Any]:
        """A stored object as the route's version shows it (shallow: only for serializing)."""
        return dict(obj, apiVersion=route.info.api_version(route.version), kind=route.info.kind)

    def _matcher(self, route: _Route, query: dict[str, str]) -> tuple[Any, Any]:
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), route.info.field_selectors)
        except SelectorError as exc:
            raise APIError.bad_request(str(exc)) from None
        if route.name:
            fields = parse_field_selector(
                ",".join(x for x in (query.get("fieldSelector"), f"metadata.name={route.name}") if x),
                route.info.field_selectors)

        def match(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return labels.matches(meta.get("labels")) and fields.matches(obj)
        return match, bool(labels or fields)

    def _do_get(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        rv = query.get("resourceVersion", "")
        if rv not in ("", "0"):  # "not older than": a revision the store has not reached waits, then 504
            wanted = parse_rv(rv)
            if self.store.revision < wanted and not self.store.wait_for_revision(wanted, self.too_large_rv_wait):
                raise too_large_rv(wanted, self.store.revision)
        with self.store.lock:
            obj = self.store.get_stored(route.info, route.namespace or "", route.name or "")
            if obj is None:
                raise APIError.not_found(route.info, route.name or "")
            if route.subresource == "scale":
                self._send(h, 200, to_scale(route.info.scale_for(route.version) or {}, obj, route.info.custom))
                return
            view = self._view(route, obj)
            accept = h.headers.get("Accept", "")
            if _is_table(accept):
                doc = to_table(route.info, route.version, [view], view["metadata"].get("resourceVersion"),
                               query.get("includeObject", "Metadata"))
            elif _is_partial(accept):
                doc = partial_metadata(view)
            else:
                doc = view
            data = dumps(doc)
        self._send(h, 200, data)

    def _do_list(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        match, filtered = self._matcher(route, query)
        req = parse_list_request(query)
        store = self.store
        if req.not_older_than is not None and store.revision < req.not_older_than:
            if not store.wait_for_revision(req.not_older_than, self.too_large_rv_wait):
                raise too_large_rv(req.not_older_than, store.revision)
        with store.lock:
            revision = store.revision
            if req.revision is not None and req.revision > revision:
                raise too_large_rv(req.revision, revision)
            if req.revision is None:
                bucket = store.objects.get(route.info.key(), {})
            else:
                bucket = store.snapshot_at(route.info, req.revision)
                if bucket is None:
                    if req.from_continue:
                        err = APIError(410, "Expired", INCONSISTENT_CONTINUE, None)
                        err.list_continue = encode_continue(req.start or "", -1)
                        raise err
                    raise APIError(410, "Expired", EXPIRED_LIST, None)
                revision = req.revision
            keys = sorted(((storage_key(k[0], k[1]) if route.namespace is None else k[1]), k)
                          for k in bucket if route.namespace is None or k[0] == route.namespace)
            if req.start is not None:
                keys = [(sk, k) for sk, k in keys if sk >= req.start]
            items: list[dict[str, Any]] = []
            cont = None
            remaining = None
            for i, (sk, k) in enumerate(keys):
                obj = bucket[k]
                if not match(obj):
                    continue
                items.append(obj)
                if req.limit and len(items) >= req.limit:
                    if i + 1 < len(keys):  # more keys after this one (matching or not), as etcd's "more"
                        cont = encode_continue(sk + "\x00", revision)
                        if not filtered:
                            remaining = len(keys) - i - 1
                    break
            views = [self._view(route, o) for o in items]
            list_meta: dict[str, Any] = {"resourceVersion": str(revision)}
            if cont is not None:
                list_meta["continue"] = cont
                if remaining is not None:
                    list_meta["remainingItemCount"] = remaining
            accept = h.headers.get("Accept", "")
            if _is_table(accept):
                doc = to_table(route.info, route.version, views, str(revision), query.get("includeObject", "Metadata"))
                doc["metadata"] = list_meta
            elif _is_partial(accept):
                doc = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
                       "items": [partial_metadata(v) for v in views]}
            else:
                doc = {"kind": route.info.list_kind, "apiVersion": route.info.api_version(route.version),
                       "metadata": list_meta, "items": views}
            data = dumps(doc)
        self._send(h, 200, data)

    # ------------------------------------------------------------------ watch

    def _do_watch(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        match, _ = self._matcher(route, query)
        store = self.store
        info = route.info
        accept = h.headers.get("Accept", "")
        as_table, as_partial = _is_table(accept), _is_partial(accept)
        include = query.get("includeObject", "Metadata")
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else self.max_watch_seconds
        except ValueError:
            raise APIError.bad_request(f"invalid timeoutSeconds {query['timeoutSeconds']!r}") from None
        started = time.monotonic()
        deadline = started + min(timeout, self.max_watch_seconds)
        drop = plan.drop_watch
        drop_at = started + drop.after_seconds if drop is not None and drop.after_seconds is not None else None
        drop_after = drop.after_events if drop is not None else None
        rv = query.get("resourceVersion", "")
        send_initial = self._watch_options(query)
        expired: APIError | None = None
        initial: list[dict[str, Any]] = []
        if send_initial is not None and rv not in ("", "0"):  # NotOlderThan: wait for that revision (bounded)
            wanted = parse_rv(rv)
            if store.revision < wanted and not store.wait_for_revision(wanted, self.too_large_rv_wait):
                raise too_large_rv(wanted, store.revision)
        with store.lock:
            if send_initial is True or (send_initial is None and rv in ("", "0")):
                items, cursor = store.list(info, route.namespace, match)
                initial = [self._view(route, o) for o in items]
            elif rv in ("", "0"):  # sendInitialEvents=false: changes from now on
                cursor = store.revision
            else:
                try:
                    cursor = int(rv)
                except ValueError:
                    raise APIError.bad_request(f'resourceVersion: Invalid value: "{rv}": must be a number') from None
                if cursor < store.floor:
                    expired = APIError.expired(cursor, store.floor)
        initial_end = send_initial is True and bookmarks

        def encode(etype: str, obj: dict[str, Any]) -> bytes:
            if etype in ("ERROR", "BOOKMARK"):
                payload = obj
            elif as_table:
                payload = to_table(info, route.version, [obj], obj["metadata"].get("resourceVersion"), include)
            elif as_partial:
                payload = partial_metadata(obj)
            else:
                payload = obj
            return dumps({"type": etype, "object": payload}) + b"\n"

        def bookmark(revision: int) -> bytes:
            return encode("BOOKMARK", {"kind": info.kind, "apiVersion": info.api_version(route.version),
                                       "metadata": {"resourceVersion": str(revision)}})

        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache, private")
        h.end_headers()
        sent = 0

        def write(data: bytes) -> None:
            try:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            except OSError:
                raise _ClientGone() from None

        def dropped() -> bool:
            return drop_after is not None and sent >= drop_after

        abrupt = False
        if expired is not None:
            write(encode("ERROR", expired.body()))
        else:
            for obj in initial:
                if dropped():
                    break
                write(encode("ADDED", obj))
                sent += 1
            if initial_end and not dropped():
                # The watch-list stream's end of the initial state (cacher, WatchList): a bookmark at the
                # state's revision marked with the k8s.io/initial-events-end annotation.
                write(encode("BOOKMARK", {"kind": info.kind, "apiVersion": info.api_version(route.version),
                                          "metadata": {"resourceVersion": str(cursor),
                                                       "annotations": {"k8s.io/initial-events-end": "true"}}}))
            next_bookmark = time.monotonic() + self.bookmark_interval
            while not dropped():
                now = time.monotonic()
                if self._stopping or now >= deadline or (drop_at is not None and now >= drop_at):
                    break
                wake = min(deadline, drop_at or deadline, next_bookmark if bookmarks else deadline)
                with store.cond:
                    while not (store.events and store.events[-1].revision > cursor) \
                            and not self._stopping and store.floor <= cursor:
                        left = wake - time.monotonic()
                        if left <= 0:
                            break
                        store.cond.wait(timeout=min(left, 1.0))
                    events = store.events_since(cursor)
                    if events is None:
                        expired = APIError.expired(cursor, store.floor)
                    elif events and plan.lag > 0:  # a lagging cache: only what happened lag seconds ago
                        due = time.monotonic() - plan.lag
                        late = next((i for i, ev in enumerate(events) if ev.at > due), len(events))
                        if late < len(events):
                            pause = min(events[late].at - due, max(0.0, wake - time.monotonic()), 1.0)
                            events = events[:late]
                            if not events:
                                store.cond.wait(timeout=max(pause, 0.001))
                        if events:
                            cursor = events[-1].revision
                    elif events:
                        cursor = events[-1].revision
                if expired is not None:
                    write(encode("ERROR", expired.body()))
                    break
                for ev in events or ():
                    out = self._transform(ev, info, route, match)
                    if out is None:
                        continue
                    write(encode(out[0], out[1]))
                    sent += 1
                    if dropped():
                        break
                if bookmarks and time.monotonic() >= next_bookmark and not dropped():
                    write(bookmark(cursor))
                    next_bookmark = time.monotonic() + self.bookmark_interval
            abrupt = drop is not None and drop.abrupt and (dropped() or (drop_at is not None
                                                                        and time.monotonic() >= drop_at))
            if bookmarks and not abrupt and not self._stopping and not dropped():
                write(bookmark(cursor))
        if abrupt:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            h.close_connection = True

    @staticmethod
    def _watch_options(query: dict[str, str]) -> bool | None:
        """``sendInitialEvents`` (None when absent), after the watch rules of ``ValidateListOptions``
        (``apimachinery/pkg/apis/meta/internalversion/validation``; WatchList is on by default in 1.32)."""
        raw = query.get("sendInitialEvents")
        send: bool | None = None
        if raw is not None and raw != "":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise APIError.bad_request(f'strconv.ParseBool: parsing "{raw}": invalid syntax')
            send = raw.lower() in ("true", "1")
        match = query.get("resourceVersionMatch", "")
        causes: list[dict[str, str]] = []
        if send is not None and match != "NotOlderThan":
            causes.append(cause("resourceVersionMatch", "FieldValueForbidden",
                                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
        if match:
            if send is None:
                causes.append(cause("resourceVersionMatch", "FieldValueForbidden", "Forbidden: resourceVersionMatch "
                                    "is forbidden for watch unless sendInitialEvents is provided"))
            if match != "NotOlderThan":
                causes.append(cause("resourceVersionMatch", "FieldValueNotSupported",
                                    f'Unsupported value: "{match}": supported values: "NotOlderThan"'))
        if causes:
            raise APIError.invalid_options("ListOptions", causes)
        return send

    def _transform(self, ev: Event, info: ResourceInfo, route: _Route, match: Any
                   ) -> tuple[str, dict[str, Any]] | None:
        """An event as one watcher sees it: filtered by resource, namespace and selectors; an object
        that starts or stops matching becomes ADDED or DELETED."""
        if ev.resource != info.key():
            return None
        obj = ev.object
        if route.namespace and (obj.get("metadata") or {}).get("namespace") != route.namespace:
            return None
        now = match(obj)
        if ev.type == "ADDED":
            return ("ADDED", self._view(route, obj)) if now else None
        if ev.type == "DELETED":
            before = ev.previous is not None and match(ev.previous)
            return ("DELETED", self._view(route, obj)) if (now or before) else None
        before = ev.previous is not None and match(ev.previous)
        if now and before:
            return ("MODIFIED", self._view(route, obj))
        if now:
            return ("ADDED", self._view(route, obj))
        if before:
            return ("DELETED", self._view(route, obj))
        return None

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _parse_body(h: _Handler, body: bytes, *, yaml_ok: bool = True) -> Any:
        if not body:
            raise APIError.bad_request("the request body is empty")
        ctype = (h.headers.get("Content-Type") or "application/json").lower()
        if "protobuf" in ctype or "cbor" in ctype:
            # kubectl's typed generators (create namespace/configmap/secret...) send protobuf; this
            # server stores schemaless JSON and cannot decode it without the Go types.
            raise APIError.unsupported_media_type(ctype, ["application/json", "application/yaml"])
        try:
            if "yaml" in ctype and yaml_ok:
                return yaml.safe_load(body)
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as exc:
            raise APIError.bad_request(f"the body of the request could not be decoded: {exc}") from None

    @staticmethod
    def _warning_headers(warnings: list[str]) -> dict[str, str]:
        if not warnings:
            return {}
        return {"Warning": ", ".join('299 - ' + json.dumps(w) for w in warnings[:20])}

    def _do_create(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        opts = write_options("CreateOptions", h.query_lists)
        dry, fv = opts.dry_run, opts.field_validation
        self._set_manager(h, opts)
        doc = self._parse_body(h, body)
        warnings: list[str] = []
        obj = self.store.create(route.info, route.version, route.namespace or "", doc, dry_run=dry,
                                field_validation=fv, warnings=warnings, from_api=True)
        self._send(h, 201, obj, self._warning_headers(warnings))

    def _do_update(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        opts = write_options("UpdateOptions", h.query_lists)
        dry, fv = opts.dry_run, opts.field_validation
        self._set_manager(h, opts)
        doc = self._parse_body(h, body)
        if route.subresource == "scale":
            self._write_scale(h, route, lambda current: doc, dry)
            return
        warnings: list[str] = []
        obj = self.store.update(route.info, route.version, route.namespace or "", route.name or "", doc,
                                subresource=route.subresource, dry_run=dry, field_validation=fv, warnings=warnings)
        self._send(h, 200, obj, self._warning_headers(warnings))

    def _do_patch(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        patch_type = parse_patch_type(h.headers.get("Content-Type"))
        accepted = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
        if not route.info.custom:
            accepted.insert(2, "application/strategic-merge-patch+json")
        if patch_type is None:
            raise APIError.unsupported_media_type(h.headers.get("Content-Type") or "", accepted)
        opts = write_options("PatchOptions", h.query_lists, patch_type=patch_type)
        dry, fv = opts.dry_run, opts.field_validation
        self._set_manager(h, opts)
        if patch_type == "apply":
            try:
                patch = yaml.safe_load(body) if body else None
            except yaml.YAMLError as exc:
                raise APIError.bad_request(f"error decoding YAML: {exc}") from None
        else:
            if patch_type == "strategic" and route.info.custom:
                raise APIError.unsupported_media_type(patch_type, accepted)
            if not body:
                raise APIError.bad_request("the request body is empty")
            try:
                patch = json.loads(body)
            except ValueError as exc:
                raise APIError.bad_request(f"error decoding patch: {exc}") from None
        if route.subresource == "scale":
            if patch_type == "apply":
                raise APIError.unsupported_media_type(patch_type, accepted[:3])

            def patched(current: dict[str, Any]) -> Any:
                try:
                    if patch_type == "json":
                        return json_patch(current, patch)
                    if not isinstance(patch, dict):
                        raise APIError.bad_request("a merge patch must be a JSON object")
                    return merge_patch(current, patch)
                except PatchFormatError as exc:
                    raise APIError.bad_request(str(exc)) from None
                except PatchError as exc:
                    raise APIError.unprocessable(str(exc)) from None
            self._write_scale(h, route, patched, dry)
            return
        user = getattr(h, "user", None)
        if patch_type == "apply" and user is not None and route.subresource is None:
            with self.store.lock:
                missing = self.store.get_stored(route.info, route.namespace or "", route.name or "") is None
            if missing:  # an apply that creates is authorized as a create too (handlers/patch.go)
                self._authorize(user, "create", route)
        warnings: list[str] = []
        obj, created = self.store.patch(route.info, route.version, route.namespace or "", route.name or "",
                                        patch_type, patch, subresource=route.subresource, dry_run=dry,
                                        field_validation=fv, warnings=warnings)
        self._send(h, 201 if created else 200, obj, self._warning_headers(warnings))

    def _set_manager(self, h: _Handler, opts: Any) -> None:
        """The field manager of this write: ``fieldManager``, else the User-Agent's first part."""
        self.store.set_manager(opts.field_manager or manager_from_user_agent(h.headers.get("User-Agent") or ""),
                               opts.force)

    def _write_scale(self, h: _Handler, route: _Route, make: Any, dry: bool) -> None:
        """PUT or PATCH of ``/scale``: the new Scale's replicas written to the object (lock held throughout)."""
        info, ns, name = route.info, route.namespace or "", route.name or ""
        paths = info.scale_for(route.version) or {}
        with self.store.lock:
            old = self.store.get_stored(info, ns, name)
            if old is None:
                raise APIError.not_found(info, name)
            body = make(to_scale(paths, old, info.custom))
            new = apply_scale(paths, self.store.render(info, old, route.version), body, name)
            rv = new["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise APIError.conflict(info, name)
            result = self.store.update(info, route.version, ns, name, new, dry_run=dry)
            self._send(h, 200, to_scale(paths, result, info.custom))

    def _deleted_response(self, route: _Route, obj: dict[str, Any], gone: bool) -> dict[str, Any]:
        if gone and not route.info.return_deleted_object:
            details = {"name": obj["metadata"]["name"], "kind": route.info.plural,
                       "uid": obj["metadata"].get("uid", "")}
            if route.info.group:
                details["group"] = route.info.group
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        return obj

    def _do_delete(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes, plan: Any) -> None:
        opts = delete_options(body, h.query_lists)
        dry = bool(opts.get("dryRun"))
        obj, gone = self.store.delete(route.info, route.version, route.namespace or "", route.name or "", opts,
                                      dry_run=dry)
        self._send(h, 200, self._deleted_response(route, obj, gone))

    def _do_deletecollection(self, h: _Handler, route: _Route, query: dict[str, str], body: bytes,
                             plan: Any) -> None:
        match, _ = self._matcher(route, query)  # ListOptions first, as the handler decodes them first
        opts = delete_options(body, h.query_lists)
        dry = bool(opts.get("dryRun"))
        match, _ = self._matcher(route, query)
        deleted = []
        with self.store.lock:
            items, _rev = self.store.list(route.info, route.namespace, match)
            for item in items:
                meta = item["metadata"]
                try:
                    obj, _gone = self.store.delete(route.info, route.version, meta.get("namespace", ""),
                                                   meta["name"], opts, dry_run=dry)
                except APIError as exc:
                    if exc.code == 404:
                        continue
                    raise
                deleted.append(obj)
            revision = self.store.revision
        self._send(h, 200, {"kind": route.info.list_kind, "apiVersion": route.info.api_version(route.version),
                            "metadata": {"resourceVersion": str(revision)}, "items": deleted})

