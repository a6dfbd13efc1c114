"""TLS, bearer-token authentication and RBAC authorization for the test API server (both on by default).

- TLS: a CA and a serving certificate for 127.0.0.1/localhost minted with ``cryptography`` once per process
  (and host); the CA goes into the kubeconfig the server writes (``certificate-authority-data``).
- Authentication: static bearer tokens (``token -> (user, groups)``); every authenticated user is also in
  ``system:authenticated``. A request with an unknown token is 401 with the real body
  (``{"message":"Unauthorized","reason":"Unauthorized","code":401}``); one without a token is
  ``system:anonymous`` (group ``system:unauthenticated``), which may read ``/version`` and the health paths
  (``system:public-info-viewer``) and nothing else unless RBAC grants it.
- Authorization (``plugin/pkg/auth/authorizer/rbac``): ``system:masters`` may do anything; otherwise a
  request is allowed when a RoleBinding in its namespace, or a ClusterRoleBinding, binds the user, one of its
  groups, or its ServiceAccount to a Role/ClusterRole with a rule matching its verb, API group, resource
  (``resource/subresource``) and name. Non-resource requests (discovery, ``/version``, ``/openapi``, health)
  are allowed to authenticated users, as the default ``system:discovery`` role does. A denied request is 403
  worded by ``endpoints/handlers/responsewriters.forbiddenMessage``.
- ``SelfSubjectAccessReview`` and ``SubjectAccessReview`` (``authorization.k8s.io/v1``) answer with the same
  decision (``kubectl auth can-i``).
"""

from __future__ import annotations

import atexit
import datetime
import functools
import ipaddress
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workspace_fsm.testing.errors import APIError

__all__ = ["TLSMaterial", "mint_tls", "User", "RBAC", "unauthorized", "forbidden"]


@dataclass(frozen=True)
class TLSMaterial:
    ca_pem: bytes
    cert_file: str
    key_file: str
    ca_file: str


@functools.lru_cache(maxsize=None)
def mint_tls(hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSMaterial:
    """A CA and a serving certificate for ``hosts``, valid for a day, in a temporary folder removed at exit.
    Minted once per process and host tuple: every server of a test run shares them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workspace-fsm-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workspace-fsm-test-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = Path(tempfile.mkdtemp(prefix="workspace-fsm-test-tls-"))
    atexit.register(shutil.rmtree, folder, True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (folder / "ca.crt").write_bytes(ca_pem)
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return TLSMaterial(ca_pem, str(folder / "tls.crt"), str(folder / "tls.key"), str(folder / "ca.crt"))


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = field(default_factory=tuple)


def unauthorized() -> APIError:
    return APIError(401, "Unauthorized", "Unauthorized", None)


def forbidden(user: User, verb: str, group: str, resource: str, subresource: str | None, namespace: str | None,
              name: str | None, path: str, resource_request: bool) -> APIError:
    if not resource_request:
        why = f'User "{user.name}" cannot {verb} path "{path}"'
        return APIError(403, "Forbidden", f"forbidden: {why}", {})  # NewForbidden with an empty resource
    shown = f"{resource}/{subresource}" if subresource else resource
    if namespace:
        why = f'User "{user.name}" cannot {verb} resource "{shown}" in API group "{group}" in the namespace ' \
              f'"{namespace}"'
    else:
        why = f'User "{user.name}" cannot {verb} resource "{shown}" in API group "{group}" at the cluster scope'
    qualified = f"{resource}.{group}" if group else resource
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    message = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
    return APIError(403, "Forbidden", message, details)


def _matches(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and ("*" in values or wanted in values)


class RBAC:
    """Decisions from the Roles, ClusterRoles and their bindings in the store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _objects(self, group: str, plural: str) -> list[dict[str, Any]]:
        return list(self.store.objects.get((group, plural), {}).values())

    @staticmethod
    def _subject_matches(subject: Any, user: User, binding_ns: str) -> bool:
        if not isinstance(subject, dict):
            return False
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User":
            return name == user.name
        if kind == "Group":
            return name in user.groups
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding_ns
            return user.name == f"system:serviceaccount:{ns}:{name}"
        return False

    def _rules(self, ref: Any, binding_ns: str) -> list[dict[str, Any]]:
        if not isinstance(ref, dict):
            return []
        if ref.get("kind") == "ClusterRole":
            role = self.store.objects.get(("rbac.authorization.k8s.io", "clusterroles"), {}).get(("", ref.get("name")))
        elif ref.get("kind") == "Role" and binding_ns:
            role = self.store.objects.get(("rbac.authorization.k8s.io", "roles"), {}).get((binding_ns, ref.get("name")))
        else:
            role = None
        return [r for r in (role or {}).get("rules") or [] if isinstance(r, dict)]

    @staticmethod
    def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str, subresource: str | None,
                     name: str | None) -> bool:
        if not _matches(rule.get("verbs"), verb) or not _matches(rule.get("apiGroups"), group):
            return False
        wanted = f"{resource}/{subresource}" if subresource else resource
        resources = rule.get("resources") or []
        if not ("*" in resources or wanted in resources or (subresource and f"*/{subresource}" in resources)):
            return False
        names = rule.get("resourceNames")
        return not names or (name is not None and name in names)

    def allowed(self, user: User, verb: str, group: str, resource: str, subresource: str | None,
                namespace: str | None, name: str | None, resource_request: bool = True) -> tuple[bool, str]:
        if "system:masters" in user.groups:
            return True, ""
        if not resource_request:
            return ("system:authenticated" in user.groups), ""
        with self.store.lock:
            for b in self._objects("rbac.authorization.k8s.io", "clusterrolebindings"):
                if any(self._subject_matches(s, user, "") for s in b.get("subjects") or []):
                    for rule in self._rules(b.get("roleRef"), ""):
                        if self._rule_allows(rule, verb, group, resource, subresource, name):
                            return True, (f'RBAC: allowed by ClusterRoleBinding "{b["metadata"]["name"]}" of '
                                          f'ClusterRole "{b["roleRef"].get("name")}" to {user.name}')
            if namespace:
                for b in self._objects("rbac.authorization.k8s.io", "rolebindings"):
                    ns = b["metadata"].get("namespace", "")
                    if ns != namespace:
                        continue
                    if any(self._subject_matches(s, user, ns) for s in b.get("subjects") or []):
                        for rule in self._rules(b.get("roleRef"), ns):
                            if self._rule_allows(rule, verb, group, resource, subresource, name):
                                return True, (f'RBAC: allowed by RoleBinding "{b["metadata"]["name"]}/{ns}" of '
                                              f'{b["roleRef"].get("kind")} "{b["roleRef"].get("name")}" to '
                                              f"{user.name}")
        return False, ""
