"""The fuzz targets: one per parser of untrusted bytes, each a function of one ``bytes`` input.

A target hands its input to the real parser, and then to what trusthook does next with the
parsed value short of I/O (canonicalize it, check it, re-emit it), so that every refusal is a
``TrusthookError``. ``run_input`` is the contract: a ``TrusthookError`` is the parser refusing
the input; anything else escaping a target (``IndexError``, ``KeyError``, ``struct.error``,
``RecursionError``, ``UnicodeError``, ``OverflowError``, ``ValueError``, an ``AssertionError``
from a round-trip check here) is a bug.

Where one input can feed several parsers of the same bytes, every one of them gets it (one
refusing does not stop the next); where a target must choose (which message, which
compression), its first byte chooses. ``unpack_layer`` writes: its runner gives it a scratch
directory (inside the test's temporary directory, or a bwrap tmpfs for the long runs).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pydantic
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwk

from trusthook.agent.bundles import add_hook, encrypted_layout
from trusthook.agent.imagepolicy import parse_policy
from trusthook.agent.launch import check_launch_config, image_annotations
from trusthook.agent.service import AgentService
from trusthook.attest import bindkey, identity, requestkey
from trusthook.attest.quote import _selected
from trusthook.attest.tpmwire import (
    parse_ecdsa_signature,
    parse_quote_info,
    parse_rsassa_signature,
)
from trusthook.audit.bundle import Bundle
from trusthook.audit.checkpoint import Checkpoint, open_checkpoint
from trusthook.audit.note import NoteSigner, VerifierKey, open_note, parse_note
from trusthook.audit.verify import verify_bundle
from trusthook.common import b64, messages
from trusthook.common.config import parse_config, parse_toml
from trusthook.common.eventlog import (
    Identity,
    LaunchEvent,
    check_records,
    parse_line,
    verify_against_pcr,
)
from trusthook.common.jsonobject import parse_object
from trusthook.common.jsonread import Message
from trusthook.common.oci import image_of, parse_state, rootfs_path
from trusthook.errors import BundleError, TrusthookError
from trusthook.image.choices import Devices, Setuid
from trusthook.image.cipher import LayerCipher, PrivateOptions, PublicOptions
from trusthook.image.crypt import plain_descriptor, unwrap_layer_key
from trusthook.image.envelope import associated_data, open_sealed
from trusthook.image.keywrap import recipient_algs, unwrap
from trusthook.image.model import Descriptor, ImageConfig, LayerType, Manifest, parse_index
from trusthook.image.stream import decompressing
from trusthook.image.tarreader import Kind, TarReader, TarSource
from trusthook.image.unpack import ExtractPolicy, apply_layer, split_name
from trusthook.measure.profile import config_digest, launch_profile_digest
from trusthook.policy.appraise import HostPlace, appraise_launch
from trusthook.policy.manifest import Manifest as PolicyManifest
from trusthook.policy.manifest import changes, parse_manifest
from trusthook.policy.selector import parse_selector
from trusthook.server import api, kubernetes, release, restores
from trusthook.server.config import parse_server_config
from trusthook.server.enrollment import _check_csr
from trusthook.server.service import evidence_of

Run = Callable[[bytes], None]

BUNDLE = "/nonexistent/trusthook-fuzz/bundle"
CONFIG_PATH = Path(BUNDLE, "config.json")
CONTAINER_ID = "fuzz"
IMAGE = "sha256:" + "ab" * 32
NONCE = bytes(range(32))
ZERO_PCR = bytes(32)
MAX_ENTRIES = 4096  # tar entries read from one input
MAX_TAR_BYTES = 8 << 20  # decompressed bytes read from one input: a bomb is not a bug
NOTE_KEY_SEED = bytes(range(32))  # the signed-note key the seeds are signed with
NOTE_KEY_NAME = "fuzz.example/log"


def own_hook() -> dict[str, Any]:
    """The hook entry trusthook-runtime would write on the fuzzed host."""
    args = ["trusthook-hook", "--socket", "/run/trusthook/agent.sock", "--timeout", "30"]
    return {"path": "/usr/bin/trusthook-hook", "args": args, "timeout": 30}


@dataclass(frozen=True, kw_only=True)
class Target:
    """One fuzz target: its name, the parsers it covers, and how to build it."""

    name: str
    covers: str  # the parser entry points, as docs/fuzzing.md lists them
    make: Callable[[Path], Run]  # the target, given a scratch directory it may write under


def run_input(run: Run, data: bytes) -> None:
    """Feed ``data`` to a target: the parser refusing it is fine, anything else escapes."""
    with contextlib.suppress(TrusthookError):
        run(data)


class NotReached(TrusthookError):
    """The input never reaches the parser: the layer in front of it refuses it first (an HTTP
    body that is not JSON is FastAPI's 400), or a stub the target plugs in was reached."""


def _each(*steps: Callable[[], object]) -> None:
    """Run every step, each on its own: one refusing does not stop the next."""
    for step in steps:
        with contextlib.suppress(TrusthookError):
            step()


def _text(data: bytes) -> str:
    """The bytes as a ``str`` that a JSON string or an annotation can hold: invalid UTF-8 turns
    into lone surrogates, which JSON's ``\\udc80`` escapes can carry too."""
    return data.decode("utf-8", "surrogateescape")


def _json(data: bytes) -> object:
    """The JSON value in ``data``, or NotReached: every caller parses JSON before the parser."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise NotReached("not JSON") from None


def _select(data: bytes, count: int) -> tuple[int, bytes]:
    """The choice the first byte makes among ``count``, and the rest of the input."""
    return (data[0] % count, data[1:]) if data else (0, b"")


@functools.cache
def fuzz_keys() -> tuple[jwk.JWK, ...]:
    """The image decryption keys: P-256 and P-384 keys fixed by a constant (the seeds are
    wrapped to them, so mutations reach the unwrapped options) and a fresh RSA key (RSA-OAEP
    to it always fails: what is reached is the parsing before the decryption)."""
    p256 = ec.derive_private_key(0x7472757374686F6F6B2D66757A7A2D703235360A, ec.SECP256R1())
    p384 = ec.derive_private_key(0x7472757374686F6F6B2D66757A7A2D703338340A, ec.SECP384R1())
    fresh = rsa.generate_private_key(65537, 2048)
    return tuple(jwk.JWK.from_pyca(k) for k in (p256, p384, fresh))


@functools.cache
def note_keys() -> tuple[NoteSigner, VerifierKey]:
    """The signed-note key the audit seeds are signed with."""
    signer = NoteSigner(NOTE_KEY_NAME, Ed25519PrivateKey.from_private_bytes(NOTE_KEY_SEED))
    return signer, signer.verifier_key


# TPM structures


def tpms_attest(data: bytes) -> None:
    info = parse_quote_info(data)
    _selected(info)


def tpmt_signature(data: bytes) -> None:
    _each(
        lambda: parse_rsassa_signature(data),
        lambda: parse_ecdsa_signature(data, "request_signature"),
    )


def tpm2b_public(data: bytes) -> None:
    """A public area as the AK, as the release key and as the request key."""
    _each(
        lambda: identity.check_ak_public(data),
        lambda: bindkey._check_area(identity._unmarshal_public(data, "key").publicArea),
        lambda: requestkey._check_area(identity._unmarshal_public(data, "key").publicArea),
    )


# the event log


def cel_log(data: bytes) -> None:
    """A log file as the agent reads it (``LogStore.read``): complete lines are records."""
    complete, sep, _tail = data.rpartition(b"\n")
    lines = complete.split(b"\n") if sep and complete else []
    records = [parse_line(line, f"line {i + 1}") for i, line in enumerate(lines)]
    for record in records:
        again = parse_line(record.to_line(), "re-emitted record")
        assert again == record, f"{record} re-parses as {again}"
    pcr = records[0].pcr if records else 23
    _each(lambda: check_records(records, pcr), lambda: verify_against_pcr(records, pcr, ZERO_PCR))


# OCI images


def oci_index(data: bytes) -> None:
    parse_index(data)


def oci_manifest(data: bytes) -> None:
    manifest = Manifest.parse(data)
    rewritten = manifest.with_layers(manifest.layers)
    for layer in manifest.layers:
        kind = LayerType.parse(layer.media_type)
        assert LayerType.parse(kind.media_type) == kind
        if kind.encrypted:
            plain_descriptor(layer, layer.digest, layer.size)
    assert Manifest.parse(json.dumps(rewritten).encode()).layers == manifest.layers


def oci_config(data: bytes) -> None:
    ImageConfig.parse(data)


def ocicrypt_options(data: bytes) -> None:
    _each(
        lambda: LayerCipher(PrivateOptions.from_json(data), encrypt=False),
        lambda: PublicOptions.from_annotation(_text(data)),
        lambda: PublicOptions.from_annotation(b64.encode(data)),
    )


def jwe(data: bytes) -> None:
    """The wrapped-keys annotation as text, and the bytes as one JWE document in it."""
    keys = fuzz_keys()
    for annotation in (_text(data), b64.encode(data)):
        _each(
            functools.partial(unwrap, annotation, keys, "layer 0"),
            functools.partial(recipient_algs, annotation, "layer 0"),
        )


def ocicrypt_layer(data: bytes) -> None:
    """An encrypted layer's descriptor as a manifest lists it: pubopts and JWE annotations."""
    desc = Descriptor.parse(_json(data), "layer 0")
    kind = LayerType.parse(desc.media_type)
    key = unwrap_layer_key(desc, fuzz_keys(), "layer 0")
    LayerCipher(key.private, encrypt=False)
    if kind.encrypted:
        plain_descriptor(desc, desc.digest, desc.size)


def release_envelope(data: bytes) -> None:
    """The server's release answer as the agent opens it; first byte ``s``: the rest is the
    payload, sealed here under a known seed so that the parser behind the AEAD is reached."""
    aad = associated_data(host_id="fuzz-host", image=IMAGE, nonce=NONCE)
    if data[:1] == b"s":
        seed, iv = bytes(32), bytes(12)
        envelope = {
            "encrypted_seed": b64.encode(seed),
            "iv": b64.encode(iv),
            "ciphertext": b64.encode(AESGCM(seed).encrypt(iv, data[1:], aad)),
        }
    else:
        envelope = messages.ReleaseResponse.from_json(_json(data)).sealed_keys
    open_sealed(envelope, lambda seed: seed, aad)  # the "TPM" decrypts the seed to itself


# layer tars


class _Bounded:
    """A source that ends after ``MAX_TAR_BYTES``, so a decompression bomb ends too."""

    def __init__(self, source: TarSource) -> None:
        self._source = source
        self._left = MAX_TAR_BYTES

    def read(self, size: int, /) -> bytes:
        data = self._source.read(min(size, self._left)) if self._left > 0 else b""
        self._left -= len(data)
        return data


def _read_tar(source: TarSource) -> None:
    reader = TarReader(source)
    for _ in range(MAX_ENTRIES):
        entry = reader.next()
        if entry is None:
            return
        _each(functools.partial(split_name, entry.name, "entry"))
        if entry.kind is Kind.HARDLINK:
            _each(functools.partial(split_name, entry.linkname, "link"))
        while reader.read(1 << 16):
            pass


def tar_stream(data: bytes) -> None:
    _read_tar(io.BytesIO(data))


def layer_blob(data: bytes) -> None:
    """A layer blob: first byte picks none, gzip or zstd, the rest is decompressed."""
    choice, rest = _select(data, 3)
    _read_tar(_Bounded(decompressing(io.BytesIO(rest), ("none", "gzip", "zstd")[choice])))


def _unpack_layer(scratch: Path) -> Run:
    """Apply the tar onto a fresh root in ``scratch``; nothing may appear beside the root."""
    outside = scratch / "outside"
    outside.mkdir(exist_ok=True)
    policy = ExtractPolicy(devices=Devices.SKIP, setuid=Setuid.STRIP, preserve_owner=False)

    def run(data: bytes) -> None:
        root = Path(tempfile.mkdtemp(prefix="root-", dir=scratch))
        try:
            apply_layer(root, io.BytesIO(data), policy)
        finally:
            shutil.rmtree(root)
            left = sorted(os.listdir(scratch))
            escaped = os.listdir(outside)
            assert left == ["outside"] and not escaped, f"outside the root: {left} {escaped}"

    return run


# OCI runtime inputs


def oci_state(data: bytes) -> None:
    state = parse_state(data)
    image_of(state.annotations)


def config_json(data: bytes) -> None:
    """config.json as the shim, the hook and the agent read it (``read_config`` parses it so)."""
    config = parse_object(data, "config.json", BundleError)
    _each(
        lambda: rootfs_path(BUNDLE, config),
        lambda: config_digest(config),
        lambda: launch_profile_digest(config, CONTAINER_ID, own_hook=own_hook()),
        lambda: image_annotations(config),
        lambda: check_launch_config(config, own_hook(), CONTAINER_ID),
        lambda: encrypted_layout(config, BUNDLE, CONFIG_PATH),
        lambda: add_hook(parse_object(data, "config.json", BundleError), own_hook(), CONFIG_PATH),
    )


# TOML configuration and policies


def config_toml(data: bytes) -> None:
    config = parse_config(parse_toml(data, "config file"))
    assert config.hook_args


def server_config_toml(data: bytes) -> None:
    config = parse_server_config(parse_toml(data, "server config"))
    release.rule_warnings(config.releases)
    for group in config.groups:
        config.expectations(group)


def image_policy_toml(data: bytes) -> None:
    policy = parse_policy(parse_toml(data, "image policy"), "")
    _each(
        lambda: policy.check(encrypted=False, manifest=None),
        lambda: policy.check(encrypted=True, manifest=IMAGE),
    )


def policy_manifest(data: bytes) -> None:
    """The workload policy manifest, then what the server does with one: its digest, what
    changed from itself, and a launch appraised against it."""
    manifest = parse_manifest(data, "policy.toml")
    assert manifest.digest == parse_manifest(data, "again").digest
    assert changes(manifest, manifest) == []
    place = HostPlace(group="lab", attributes={"region": "eu-1"})
    for workload in manifest.workloads[:3]:
        for selector in workload.placement:
            assert parse_selector(selector.text) == selector
        event = LaunchEvent(
            container_id="c",
            bundle="/b",
            image_reference=None,
            image_digest=next(iter(workload.images), None),
            rootfs_digest=next(iter(workload.rootfs), IMAGE),
            rootfs_entries=1,
            config_digest=IMAGE,
            launch_profile_digest=IMAGE,
            stage="createRuntime",
            time="2026-12-02T00:00:00.000000Z",
            boot_id="b",
            identity=Identity(workload=workload.match[0]),
            encrypted=False,
        )
        appraise_launch(manifest, event, place)


# requests and answers


_BODIES: tuple[type[pydantic.BaseModel], ...] = (
    api.EnrollmentRequest,
    api.ActivationRequest,
    api.AttestationRequest,
    api.ReleaseRequest,
    restores.CheckpointRequest,  # appended: the first byte of older inputs keeps its route
    restores.RestoreRequest,
)


def _body(kind: type[pydantic.BaseModel], data: bytes) -> Any:
    """What FastAPI hands a route: JSON-decoded, then validated (both a 400 when refused)."""
    try:
        return kind.model_validate(json.loads(data))
    except (ValueError, RecursionError, pydantic.ValidationError):
        raise NotReached("FastAPI answers 400") from None


def http_body(data: bytes) -> None:
    """A request body to the server, first byte picks the route, decoded as its handler does
    before the database: base64 members, the evidence, the EK certificate and AK, the CSR, and a
    release's manifest unwrapped with the server's keys."""
    choice, rest = _select(data, len(_BODIES))
    body = _body(_BODIES[choice], rest)
    if isinstance(body, api.EnrollmentRequest):
        _each(
            lambda: identity.verify_ek_certificate(
                api.field_bytes(body.ek_certificate, "ek_certificate"),
                (),
                datetime(2025, 1, 1, tzinfo=UTC),
                frozenset(),
            ),
            lambda: api.field_bytes(body.ek_public, "ek_public"),
            lambda: identity.check_ak_public(api.field_bytes(body.ak_public, "ak_public")),
            lambda: _check_csr(body.csr),
        )
    elif isinstance(body, api.ActivationRequest):
        key = body.request_key
        _each(
            lambda: api.field_bytes(body.secret, "secret"),
            lambda: parse_rsassa_signature(api.field_bytes(key.signature, "signature")),
            lambda: parse_quote_info(api.field_bytes(key.attest, "attest")),
            lambda: api.field_bytes(key.public, "public"),
        )
    elif isinstance(body, api.AttestationRequest):
        certified = body.attributes
        _each(
            lambda: evidence_of(body),
            lambda: api.field_bytes(body.nonce, "nonce"),
            lambda: certified and api.field_bytes(certified.attest, "attributes.attest"),
            lambda: (
                certified
                and parse_rsassa_signature(api.field_bytes(certified.signature, "attributes"))
            ),
        )
    elif isinstance(body, restores.CheckpointRequest | restores.RestoreRequest):
        _each(
            lambda: api.field_bytes(body.nonce, "nonce"),
            lambda: (
                isinstance(body, restores.RestoreRequest)
                and restores.identity_of_body(body.identity)
            ),
        )
    elif isinstance(body, api.ReleaseRequest):
        manifest = api.field_bytes(body.manifest, "manifest")
        _each(
            lambda: release.find_launch(
                evidence_of(body.attestation).events, body.launch_recnum, IMAGE
            ),
            lambda: release.unwrap_layers(manifest, fuzz_keys()),
            lambda: api.field_bytes(body.release_key.public, "release_key.public"),
        )


class _Stub:
    """Stands in for the agent's log, attester and launch: reached means parsed."""

    pcr = 23

    @property
    def own_hook(self) -> dict[str, Any]:
        return own_hook()

    def __getattr__(self, name: str) -> Callable[..., object]:
        def reached(*_args: object, **_kwargs: object) -> object:
            raise NotReached(f"{name} reached")

        return reached


class _ParsingAgent(AgentService):
    """The agent's request handling up to the point where it would measure."""

    def measure(self, state: Any, stage: str) -> dict[str, Any]:
        raise NotReached("measure reached")


@functools.cache
def _agent() -> _ParsingAgent:
    stub: Any = _Stub()
    return _ParsingAgent(
        log=stub, attester=stub, launch=stub, boot_id="fuzz-boot", measure_rootfs=stub.measure
    )


def agent_request(data: bytes) -> None:
    """A request on the agent's socket: a header line, then the body (``listener``)."""
    line, _, body = data.partition(b"\n")
    try:
        header = parse_object(line, "request header", ValueError)
    except ValueError:
        return  # the listener answers "error <reason>"
    _agent().handle(header, body)


_MESSAGES: tuple[type[Message], ...] = (
    messages.EnrollmentChallenge,
    messages.EnrollmentResult,
    messages.NonceResponse,
    messages.HostStatus,
    messages.ReleaseResponse,
    messages.EnrollParams,
    messages.EnrollResult,
    messages.Enrollment,
    messages.LastAttempt,
    messages.StatusResult,
    messages.SnapshotResult,
)


def agent_message(data: bytes) -> None:
    """A message the agent or the CLI reads (the server's answers, the agent's answers, its
    state files), first byte picks which; it must re-emit as what it parsed."""
    choice, rest = _select(data, len(_MESSAGES))
    kind = _MESSAGES[choice]
    message = kind.from_json(_json(rest))
    again = kind.from_json(json.loads(json.dumps(message.to_json())))
    assert again == message, f"{message} re-parses as {again}"


# the audit log


def audit_bundle(data: bytes) -> None:
    bundle = Bundle.from_bytes(data)
    assert Bundle.from_bytes(bundle.to_bytes()) == bundle
    verify_bundle(bundle)


def signed_note(data: bytes) -> None:
    """A checkpoint as a signed note, and its parts on their own."""
    _signer, key = note_keys()
    _each(
        lambda: Checkpoint.parse(parse_note(data).text),
        lambda: open_note(data, [key]),
        lambda: open_checkpoint(data, key),
        lambda: VerifierKey.parse(_text(data).strip()),
    )


def kubernetes_body(data: bytes) -> None:
    """What the server's Kubernetes routes read (first byte: extender args or an admission
    review), then decide against a small policy with hosts in two places."""
    choice, rest = _select(data, 2)
    body = _json(rest)
    nodes = [
        ("a", True, HostPlace(group="lab", attributes={"region": "eu-1"}), ""),
        ("b", False, HostPlace(group="lab", attributes={}), "event_log: x"),
    ]
    policy = fuzz_policy()
    if choice == 0:
        pod, names, by_names = kubernetes.extender_nodes(body)
        placement = kubernetes.place(policy, pod, kubernetes.node_hosts(names, nodes))
        assert isinstance(body, dict)
        kubernetes.filter_result(placement, by_names, body.get("Nodes"))
        kubernetes.priorities(placement, names)
        return
    reviewed = kubernetes.review_pod_object(body)
    refusal = ""
    if reviewed is not None:
        refusal = kubernetes.review_pod(policy, reviewed, kubernetes.node_hosts(["a", "b"], nodes))
    kubernetes.admission_response(body, refusal)


@functools.cache
def fuzz_policy() -> PolicyManifest:
    return parse_manifest(
        (
            'format = 1\n[defaults]\nunknown_launch = "untrust"\n'
            f'[[workload]]\nname = "shop/pay"\nmatch = ["shop/*"]\nimages = ["{IMAGE}"]\n'
            'placement = ["region in [eu-1, eu-2]"]\n'
        ).encode(),
        "fuzz",
    )


def _pure(run: Run) -> Callable[[Path], Run]:
    return lambda _scratch: run


TARGETS: Mapping[str, Target] = MappingProxyType(
    {
        t.name: t
        for t in (
            Target(
                name="tpms_attest",
                covers="attest.tpmwire.parse_quote_info (TPMS_ATTEST of a quote),"
                " attest.quote._selected",
                make=_pure(tpms_attest),
            ),
            Target(
                name="tpmt_signature",
                covers="attest.tpmwire.parse_rsassa_signature, parse_ecdsa_signature",
                make=_pure(tpmt_signature),
            ),
            Target(
                name="tpm2b_public",
                covers="attest.identity.check_ak_public (tpm2-pytss unmarshaling),"
                " attest.bindkey._check_area, attest.requestkey._check_area",
                make=_pure(tpm2b_public),
            ),
            Target(
                name="cel_log",
                covers="common.eventlog.parse_line per line (CEL records), re-emission,"
                " check_records, verify_against_pcr",
                make=_pure(cel_log),
            ),
            Target(
                name="oci_index",
                covers="image.model.parse_index (index.json)",
                make=_pure(oci_index),
            ),
            Target(
                name="oci_manifest",
                covers="image.model.Manifest.parse, LayerType.parse, with_layers",
                make=_pure(oci_manifest),
            ),
            Target(
                name="oci_config",
                covers="image.model.ImageConfig.parse",
                make=_pure(oci_config),
            ),
            Target(
                name="ocicrypt_options",
                covers="image.cipher.PrivateOptions.from_json, PublicOptions.from_annotation",
                make=_pure(ocicrypt_options),
            ),
            Target(
                name="jwe",
                covers="image.keywrap.unwrap (jwcrypto JWE), recipient_algs",
                make=_pure(jwe),
            ),
            Target(
                name="ocicrypt_layer",
                covers="image.model.Descriptor.parse, image.crypt.unwrap_layer_key"
                " (pubopts and JWE annotations, private options)",
                make=_pure(ocicrypt_layer),
            ),
            Target(
                name="release_envelope",
                covers="common.messages.ReleaseResponse.from_json,"
                " image.envelope.open_sealed (payload behind the AEAD too)",
                make=_pure(release_envelope),
            ),
            Target(
                name="tar_stream",
                covers="image.tarreader.TarReader, image.unpack.split_name",
                make=_pure(tar_stream),
            ),
            Target(
                name="layer_blob",
                covers="image.stream.decompressing (gzip, zstd), then TarReader",
                make=_pure(layer_blob),
            ),
            Target(
                name="unpack_layer",
                covers="image.unpack.apply_layer onto a scratch root (nothing may land outside it)",
                make=_unpack_layer,
            ),
            Target(
                name="oci_state",
                covers="common.oci.parse_state (the hook's stdin, the agent's hook body)",
                make=_pure(oci_state),
            ),
            Target(
                name="config_json",
                covers="config.json: common.oci.rootfs_path, measure.profile digests,"
                " agent.launch checks, agent.bundles.add_hook",
                make=_pure(config_json),
            ),
            Target(
                name="config_toml",
                covers="common.config.parse_toml, parse_config",
                make=_pure(config_toml),
            ),
            Target(
                name="server_config_toml",
                covers="server.config.parse_server_config (groups, [[release]] policy)",
                make=_pure(server_config_toml),
            ),
            Target(
                name="image_policy_toml",
                covers="agent.imagepolicy.parse_policy",
                make=_pure(image_policy_toml),
            ),
            Target(
                name="http_body",
                covers="server.api bodies (pydantic), server.service.evidence_of, field_bytes,"
                " EK certificate, AK, CSR, release manifest unwrap",
                make=_pure(http_body),
            ),
            Target(
                name="agent_request",
                covers="agent socket: request header, agent.service.AgentService.handle"
                " (parse_state, EnrollParams)",
                make=_pure(agent_request),
            ),
            Target(
                name="agent_message",
                covers="common.messages from_json of every message the agent and CLI read",
                make=_pure(agent_message),
            ),
            Target(
                name="audit_bundle",
                covers="audit.bundle.Bundle.from_bytes, audit.verify.verify_bundle",
                make=_pure(audit_bundle),
            ),
            Target(
                name="policy_manifest",
                covers="policy.manifest.parse_manifest (policy.locate, policy.selector), its"
                " digest and changes, policy.appraise.appraise_launch",
                make=_pure(policy_manifest),
            ),
            Target(
                name="kubernetes_body",
                covers="server.kubernetes: extender_nodes, place, filter_result, priorities,"
                " review_pod_object, review_pod, admission_response",
                make=_pure(kubernetes_body),
            ),
            Target(
                name="signed_note",
                covers="audit.note.parse_note, open_note, VerifierKey.parse,"
                " audit.checkpoint.Checkpoint.parse, open_checkpoint",
                make=_pure(signed_note),
            ),
        )
    }
)
