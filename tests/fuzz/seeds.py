"""Write the fuzzers' seed corpora and dictionaries: ``python -m tests.fuzz.seeds``.

Seeds are small, real inputs, one file each, in ``tests/fuzz/corpus/<target>/``: the quotes and
records recorded from swtpm (``tests/data/evidence``), a real OCI layout built and encrypted by
the test helpers (its index, manifest, config, layer descriptors, wrapped keys, options), tars
as ``tarfile`` writes them, a ``runc spec`` config.json, the shipped TOML examples, the bodies
the agent sends. Running it again replaces the ``seed-*`` files (keys and IVs are fresh each
time) and keeps the regression inputs (``regress-*``: inputs that once failed, see
docs/fuzzing.md) as they are. Dictionaries (``tests/fuzz/dict/``) hold the tokens of each
input language.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from tests.data.recorded import load
from tests.fuzz.targets import (
    _BODIES,
    _MESSAGES,
    CONTAINER_ID,
    IMAGE,
    NONCE,
    TARGETS,
    fuzz_keys,
    note_keys,
    own_hook,
)
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, compress, tar_bytes
from trusthook.audit.bundle import export_bundle
from trusthook.audit.checkpoint import Checkpoint, sign_checkpoint
from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
from trusthook.audit.tree import MemoryTree
from trusthook.common import b64, messages
from trusthook.common.eventlog import Record
from trusthook.common.jsonread import Message
from trusthook.common.protocol import PROTOCOL_VERSION
from trusthook.image.crypt import encrypt_image
from trusthook.image.envelope import associated_data, seal
from trusthook.image.keywrap import Recipient, unwrap
from trusthook.image.layout import Layout
from trusthook.image.model import ANNOTATION_JWE, ANNOTATION_PUBOPTS

HERE = Path(__file__).parent
CORPORA = HERE / "corpus"
DICTIONARIES = HERE / "dict"
REPO = HERE.parent.parent
Seeds = dict[str, list[bytes]]


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _tpm(seeds: Seeds) -> None:
    recording = load()
    quotes = [q for e in recording.epochs for q in e.quotes]
    seeds["tpms_attest"] = [q.attest for q in quotes]
    ecdsa = b"\x00\x18\x00\x0b" + b"\x00\x20" + bytes(range(32)) + b"\x00\x20" + bytes(32)
    seeds["tpmt_signature"] = [*(q.signature for q in quotes[:3]), ecdsa]
    seeds["tpm2b_public"] = [recording.ak_public]
    records = [r for q in quotes for r in q.events]
    seeds["cel_log"] = [
        records[0].to_line(),
        b"".join(r.to_line() for r in records[:4]),
        records[0].to_line() + records[1].to_line()[:40],  # a torn tail
    ]


def _image(seeds: Seeds, work: Path) -> None:
    plain = tar_bytes(
        [
            Entry(name="bin", kind=tarfile.DIRTYPE, mode=0o755),
            Entry(name="bin/sh", data=b"#!/bin/true\n", mode=0o755),
            Entry(name="etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        ]
    )
    second = tar_bytes([Entry(name="etc/.wh.passwd"), Entry(name="etc/hostname", data=b"x\n")])
    build_image(work / "plain", "v1", ImageSpec(layers=[plain, second], cmd=("/bin/sh",)))
    keys = fuzz_keys()
    recipients = [
        Recipient(key=keys[0], alg="ECDH-ES+A256KW"),
        Recipient(key=keys[1], alg="ECDH-ES+A128KW"),
    ]
    source = Layout.open(work / "plain")
    encrypted = Layout.open_or_create(work / "encrypted")
    encrypt_image(source, "v1", encrypted, "v1", recipients[:1])
    both = Layout.open_or_create(work / "both")
    encrypt_image(source, "v1", both, "v1", recipients, select=lambda i: i == 0)
    seeds["oci_index"] = [(layout.path / "index.json").read_bytes() for layout in (source, both)]
    manifests, layers = [], []
    for layout in (source, encrypted, both):
        desc, manifest = layout.manifest("v1")
        manifests.append(layout.read_blob(desc))
        layers += [_dumps(dict(layer.raw)) for layer in manifest.layers]
    seeds["oci_manifest"] = manifests
    seeds["oci_config"] = [source.read_blob(source.manifest("v1")[1].config)]
    seeds["ocicrypt_layer"] = layers
    _, manifest = encrypted.manifest("v1")
    annotations = [layer.annotations for layer in manifest.layers]
    jwe = [a[ANNOTATION_JWE] for a in annotations]
    seeds["jwe"] = [*(j.encode() for j in jwe), *(base64.b64decode(j) for j in jwe[:1])]
    private = unwrap(jwe[0], keys, "layer 0")
    pubopts = annotations[0][ANNOTATION_PUBOPTS]
    seeds["ocicrypt_options"] = [private, pubopts.encode(), base64.b64decode(pubopts)]
    release = {"layers": {manifest.layers[0].digest: b64.encode(private)}}
    seeds["release_envelope"] = [b"s" + _dumps(release), *_envelopes(release, private)]
    seeds["_release_manifest"] = [encrypted.read_blob(encrypted.manifest("v1")[0])]


def _envelopes(payload: Mapping[str, Any], private: bytes) -> list[bytes]:
    """Release answers: one that opens (the fuzz target's "TPM" hands back the seed as sent)
    and one sealed to an RSA key as the server seals them (its seed never opens here)."""
    aad = associated_data(host_id="fuzz-host", image=IMAGE, nonce=NONCE)
    seed, iv = bytes(range(32)), bytes(range(12))
    opens = {
        "encrypted_seed": b64.encode(seed),
        "iv": b64.encode(iv),
        "ciphertext": b64.encode(AESGCM(seed).encrypt(iv, _dumps(payload), aad)),
    }
    digest = next(iter(payload["layers"]))
    sealed = seal(rsa.generate_private_key(65537, 2048).public_key(), {digest: private}, aad)
    return [_dumps({"image": IMAGE, "sealed_keys": keys}) for keys in (opens, sealed)]


def _trim(tar: bytes) -> bytes:
    """``tar`` without the zero blocks tarfile pads it with past the two that end it."""
    end = len(tar.rstrip(b"\0"))
    return tar[: -(-end // 512) * 512 + 1024]


def _tars(seeds: Seeds) -> None:
    ustar = tar_bytes(
        [
            Entry(name="d", kind=tarfile.DIRTYPE, mode=0o755),
            Entry(name="d/f", data=b"hello\n", uid=1000, gid=1000),
            Entry(name="d/s", kind=tarfile.SYMTYPE, linkname="f"),
            Entry(name="d/h", kind=tarfile.LNKTYPE, linkname="d/f"),
            Entry(name="d/fifo", kind=tarfile.FIFOTYPE),
            Entry(name="d/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3),
            Entry(name="d/" + "n" * 120, data=b"long name\n"),
            Entry(name="d/.wh.gone"),
            Entry(name="d/sub/.wh..wh..opq"),
        ]
    )
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("g/" + "x" * 110)
        info.size, info.uid = 3, 1 << 30
        tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("g/link")
        link.type, link.linkname = tarfile.SYMTYPE, "y" * 120
        tf.addfile(link)
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("p/file")
        info.size, info.mtime = 2, 1_700_000_000.5
        info.pax_headers = {"SCHILY.xattr.user.test": "v", "mtime": "1700000000.123456789"}
        tf.addfile(info, io.BytesIO(b"ok"))
    # attacks the extractor must refuse or contain: every target is inside the scratch directory
    hostile = [
        tar_bytes([Entry(name="../outside/escaped", data=b"x")]),
        tar_bytes(
            [
                Entry(name="up", kind=tarfile.SYMTYPE, linkname="../outside"),
                Entry(name="up/escaped", data=b"x"),
            ]
        ),
        tar_bytes([Entry(name="l", kind=tarfile.LNKTYPE, linkname="../outside/x")]),
    ]
    tars = [_trim(t) for t in (ustar, gnu.getvalue(), pax.getvalue())]
    seeds["tar_stream"] = [*tars, bytes(1024)]
    seeds["unpack_layer"] = [*tars, *map(_trim, hostile)]
    seeds["layer_blob"] = [
        bytes([i]) + compress(tars[0], c) for i, c in enumerate(("none", "gzip", "zstd"))
    ]


def _runc_spec(work: Path) -> dict[str, Any]:
    """``runc spec``'s config.json (the runtime-spec defaults); a minimal one without runc."""
    runc = shutil.which("runc")
    if runc is not None:
        subprocess.run([runc, "spec"], cwd=work, check=True)
        spec: dict[str, Any] = json.loads((work / "config.json").read_text())
        return spec
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs", "readonly": True},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
    }


def _oci(seeds: Seeds, work: Path) -> None:
    state = {
        "ociVersion": "1.0.2",
        "id": "4b1c0e6f2a",
        "status": "creating",
        "pid": 4242,
        "bundle": "/run/containerd/io.containerd.runtime.v2.task/default/4b1c0e6f2a",
        "annotations": {"io.kubernetes.cri.image-name": "docker.io/library/busybox:1.36"},
    }
    seeds["oci_state"] = [_dumps(state), _dumps({**state, "annotations": {}, "pid": None})]
    spec = _runc_spec(work)
    hooked = json.loads(json.dumps(spec))
    hooked["hooks"] = {
        "createRuntime": [own_hook()],
        "prestart": [
            {
                "path": "/proc/1234/exe",
                "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", CONTAINER_ID, "0" * 12],
            }
        ],
    }
    hooked["annotations"] = {
        "org.trusthook.image.layout": "/var/lib/images/app",
        "org.trusthook.image.ref": "v1",
        "run.oci.keep_original_groups": "1",
    }
    hooked["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0:c1,c2"
    hooked["linux"]["namespaces"].append({"type": "network", "path": "/run/netns/cni-1234"})
    hooked["mounts"].append({"destination": "/etc/hosts", "source": f"/run/{CONTAINER_ID}/hosts"})
    seeds["config_json"] = [_dumps(spec), _dumps(hooked)]
    header = {"version": PROTOCOL_VERSION, "op": "hook", "stage": "createRuntime", "audit": False}
    enroll = {
        "version": PROTOCOL_VERSION,
        "op": "enroll",
        "params": {
            "server": "https://attest.example:8443",
            "server_ca": "/etc/trusthook/server-ca.pem",
            "hostname": "node-1",
            "note": "",
            "reenroll": False,
        },
    }
    seeds["agent_request"] = [
        _dumps(header) + b"\n" + _dumps(state),
        _dumps(enroll) + b"\n",
        *(_dumps({"version": PROTOCOL_VERSION, "op": op}) + b"\n" for op in ("status", "snapshot")),
    ]


def _toml(seeds: Seeds) -> None:
    shipped = REPO / "oci-config"
    seeds["config_toml"] = [(shipped / "trusthook.toml").read_bytes()]
    server = (shipped / "trusthook-server.toml").read_bytes()
    release = (
        b'\n[[release]]\nimage = "' + IMAGE.encode() + b'"\ngroups = ["lab"]\n'
        b'launch_profiles = ["any"]\n'
    )
    seeds["server_config_toml"] = [server, server + release]
    seeds["image_policy_toml"] = [(shipped / "image-policy.toml").read_bytes()]
    seeds["policy_manifest"] = [
        (shipped / "trusthook-policy.toml").read_bytes(),
        b'format = 1\n[[workload]]\nname = "w"\nmatch = ["shop/*", "x"]\n'
        b'rootfs = ["sha256:' + b"0" * 64 + b'"]\nplacement = ["!quarantine", "rack",'
        b' "site not in [a, \\"b c\\"]"]\nrestore = true\n',
    ]


def _kubernetes(seeds: Seeds) -> None:
    """The scheduler extender's and the admission webhook's bodies (docs/kubernetes.md)."""
    image = "sha256:" + "ab" * 32
    pod = {
        "metadata": {
            "namespace": "shop",
            "name": "pay-1",
            "annotations": {"org.trusthook.workload": "shop/pay"},
        },
        "spec": {
            "initContainers": [{"name": "init", "image": f"r.example/init@{image}"}],
            "containers": [{"name": "pay", "image": "r.example/pay:3"}],
        },
    }
    nodes = {"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "object": pod,
        },
    }
    seeds["kubernetes_body"] = [
        b"\0" + _dumps({"Pod": pod, "Nodes": nodes, "NodeNames": None}),
        b"\0" + _dumps({"Pod": pod, "NodeNames": ["a", "b", "c"]}),
        b"\1" + _dumps(review),
    ]


def _certificate_and_csr() -> tuple[bytes, str]:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EK")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER), csr.public_bytes(
        serialization.Encoding.PEM
    ).decode()


def _requests(seeds: Seeds) -> None:
    recording = load()
    quote = recording.epochs[0].quotes[-1]
    attestation = messages.AttestationRequest(
        nonce=quote.nonce,
        quote_attest=quote.attest,
        quote_signature=quote.signature,
        pcrs=dict(quote.pcr_values),
        boot_id=quote.boot_id,
        events=quote.events,
        attributes_attest=b"\xffTCG\x80\x14",  # the first bytes of a TPM2_NV_Certify
        attributes_signature=quote.signature,
    )
    der, csr = _certificate_and_csr()
    enrollment = messages.EnrollmentRequest(
        hostname="node-1",
        note="rack 4",
        ek_certificate=der,
        ek_public=recording.ak_public,
        ak_public=recording.ak_public,
        csr=csr,
        reenroll=False,
    )
    manifest = seeds.pop("_release_manifest")[0]
    launch = quote.events[-1].recnum if quote.events else 0
    release = messages.ReleaseRequest(
        attestation=attestation,
        launch_recnum=launch,
        manifest=manifest,
        key_public=recording.ak_public,
        key_attest=quote.attest,
        key_signature=quote.signature,
    )
    bodies = {
        "EnrollmentRequest": enrollment.to_json(),
        "ActivationRequest": messages.ActivationRequest(
            secret=bytes(32),
            key_public=recording.ak_public,
            key_attest=quote.attest,
            key_signature=quote.signature,
        ).to_json(),
        "AttestationRequest": attestation.to_json(),
        "ReleaseRequest": release.to_json(),
        "CheckpointRequest": messages.CheckpointRequest(
            nonce=quote.nonce, container="web-1"
        ).to_json(),
        "RestoreRequest": messages.RestoreRequest(
            nonce=quote.nonce,
            container="web-1",
            identity={"kubernetes": {"namespace": "shop", "pod": "web-0", "container": "app"}},
            image_digest="sha256:" + "ab" * 32,
            encrypted=False,
        ).to_json(),
    }
    seeds["http_body"] = [
        bytes([i]) + _dumps(bodies[kind.__name__]) for i, kind in enumerate(_BODIES)
    ]
    seeds["agent_message"] = [
        bytes([_MESSAGES.index(type(m))]) + _dumps(m.to_json()) for m in _messages(quote.events)
    ]


def _messages(records: Iterable[Record]) -> list[Message]:
    verdict = messages.HostStatus(
        host_id="ab" * 32,
        hostname="node-1",
        group="default",
        trusted=False,
        reasons=(messages.ReasonBody(check="pcr_digest", message="m", expected="e", got="g"),),
        since="2025-01-01T00:00:00Z",
        valid_until=None,
        last_attestation="2025-01-01T00:00:00Z",
        enrolled_at="2025-01-01T00:00:00Z",
        verified_recnum=3,
    )
    enrollment = messages.Enrollment(
        server="https://attest.example:8443", host_id="ab" * 32, hostname="node-1", group="g"
    )
    attempt = messages.LastAttempt(
        last_attempt="2025-01-01T00:00:00Z", error=None, last_verdict=verdict
    )
    return [
        messages.EnrollmentChallenge(
            enrollment_id="0a1b2c",
            host_id="ab" * 32,
            credential_blob=b"blob",
            encrypted_secret=b"secret",
            expires_at="2025-01-01T00:05:00Z",
        ),
        messages.EnrollmentResult(
            host_id="ab" * 32, group="g", certificate="-----BEGIN", ca_certificate="-----BEGIN"
        ),
        messages.NonceResponse(
            nonce=NONCE,
            expires_at="2025-01-01T00:01:00Z",
            pcrs=(0, 7, 23),
            verified_boot_id=None,
            verified_recnum=-1,
            attributes_tag=b"THA1" + bytes(64),
        ),
        verdict,
        messages.ReleaseResponse(image=IMAGE, sealed_keys={"iv": "AAAA"}),
        messages.EnrollParams(
            server="https://attest.example:8443",
            server_ca=Path("/etc/trusthook/server-ca.pem"),
            hostname="node-1",
            note="",
            reenroll=True,
        ),
        messages.EnrollResult(host_id="ab" * 32, server="https://x", reenrolled=False),
        enrollment,
        attempt,
        messages.StatusResult(enrollment=enrollment, attempt=attempt),
        messages.SnapshotResult(pcr=23, pcr_value=bytes(32), records=tuple(records)),
    ]


def _audit(seeds: Seeds) -> None:
    signer, key = note_keys()
    tree = MemoryTree()
    entries = []
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(6):
        subject = Subject(kind=SubjectKind.HOST, id=f"host-{i % 2}")
        detail: dict[str, Any] = {"trusted": True, "reasons": []}
        entry = AuditEntry.at(
            index=i,
            moment=start + timedelta(seconds=i),
            event=EventType.ATTESTED,
            subject=subject,
            detail=detail,
        )
        tree.append(entry.leaf_hash())
        entries.append(entry)
    origin = key.name
    notes = [
        sign_checkpoint(Checkpoint(origin=origin, size=n, root=tree.root(n)), signer)
        for n in (3, 6)
    ]
    bundle = export_bundle(tree, key=key, checkpoint=notes[1], entries=entries[2:5], since=3)
    seeds["audit_bundle"] = [bundle.to_bytes()]
    seeds["signed_note"] = [n.encode() for n in notes] + [key.encode().encode()]


def write_dictionaries() -> None:
    DICTIONARIES.mkdir(exist_ok=True)
    for name, tokens in DICTIONARY_TOKENS.items():
        lines = [_dict_entry(t) for t in dict.fromkeys(tokens)]
        (DICTIONARIES / name).write_text("".join(f"{line}\n" for line in lines))


def _dict_entry(token: str) -> str:
    def one(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        return c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}"

    return '"' + "".join(map(one, token)) + '"'


HEX = "ab" * 32
DICTIONARY_TOKENS: dict[str, list[str]] = {
    "json.dict": [
        *("{", "}", "[", "]", ":", ",", '"', "true", "false", "null", "-1", "0", "1e400"),
        *("1.5", "-0", '"\\u0000"', '"\\ud800"', '"\\udc80"', '"\\u00b2"', '"\\\\"', '"/"'),
        *('".."', '"sha256:"', f'"{HEX}"', f'"sha256:{HEX}"', '"AAAA"', '"===="'),
        # the event log, the agent's and the server's messages, the OCI state
        *("recnum", "pcr", "digests", "hashAlg", "digest", "content_type", "content"),
        *("trusthook_launch", "version", "container_id", "bundle", "image", "reference"),
        *("rootfs_digest", "rootfs_entries", "config_digest", "launch_profile_digest"),
        *("stage", "time", "boot_id", "id", "status", "pid", "annotations", "ociVersion"),
        *("op", "hook", "snapshot", "enroll", "attest", "params", "audit", "createRuntime"),
        *("prestart", "enrollment_id", "host_id", "credential_blob", "encrypted_secret"),
        *("expires_at", "group", "certificate", "ca_certificate", "nonce", "pcrs"),
        *("verified_boot_id", "verified_recnum", "check", "message", "expected", "got"),
        *("hostname", "trusted", "reasons", "since", "valid_until", "last_attestation"),
        *("enrolled_at", "sealed_keys", "server", "server_ca", "note", "reenroll"),
        *("reenrolled", "last_attempt", "error", "last_verdict", "enrolled", "enrollment"),
        *("pcr_value", "records", "quote", "signature", "events", "launch_recnum"),
        *("manifest", "release_key", "public", "ek_certificate", "ek_public", "ak_public"),
        *("csr", "secret", "encrypted_seed", "iv", "ciphertext", "layers"),
        # OCI images, ocicrypt, JWE
        *("schemaVersion", "mediaType", "config", "size", "manifests", "rootfs", "type"),
        *("diff_ids", "Entrypoint", "Cmd", "Env", "WorkingDir", "User"),
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.config.v1+json",
        *("application/vnd.oci.image.layer.v1.tar", "+gzip", "+zstd", "+encrypted"),
        "org.opencontainers.image.ref.name",
        ANNOTATION_PUBOPTS,
        ANNOTATION_JWE,
        *("org.trusthook.image.layout", "org.trusthook.image.ref"),
        *("cipher", "hmac", "cipheroptions", "symkey", "AES_256_CTR_HMAC_SHA256"),
        *("protected", "recipients", "header", "encrypted_key", "tag", "alg", "enc", "epk"),
        *("kty", "crv", "x", "y", "EC", "RSA", "P-256", "P-384", "A256GCM", "RSA-OAEP"),
        *("RSA-OAEP-256", "ECDH-ES+A128KW", "ECDH-ES+A256KW", "zip", "DEF"),
        # config.json
        *("root", "path", "readonly", "process", "args", "env", "cwd", "user"),
        *("capabilities", "linux", "namespaces", "network", "mounts", "destination"),
        *("source", "hooks", "libnetwork-setkey", "/proc/1/exe", "-exec-root=/"),
        *("selinuxLabel", "mountLabel", "system_u:system_r:container_t:s0:c1,c2"),
        *("/run/netns/x", "uidMappings", "seccomp", "rlimits"),
        # the audit bundle
        *("format", "key", "checkpoint", "selection", "entries", "leaf_hashes", "proof"),
        *("consistency", "NaN", "Infinity"),
    ],
    "toml.dict": [
        *("[", "]", "[[", "]]", "=", '"', "'", '"""', "'''", "{", "}", ",", ".", "\n", "#"),
        *("true", "false", "inf", "nan", "-inf", "0x", "0o", "0b", "1e400"),
        *("1979-05-27T07:32:00Z", "99999999999999999999", "0x" + "f" * 40),
        *('"\\u00b2"', '"\\ud800"', "tpm", "tcti", "pcr", "agent", "socket", "state_dir"),
        *("hasher", "hash_threads", "hook", "mode", "timeout", "runtime", "path"),
        *("attestation", "interval", "images", "policy", "roots", "enforce", "audit"),
        *("auto", "native", "python", "server", "host", "port", "hostnames", "database"),
        *("ek_ca_bundle", "ek_ca_anchors", "container_pcr", "nonce_ttl", "enrollment_ttl"),
        *("validity", "max_body", "groups", "pcrs", "release", "image", "launch_profiles"),
        *("any", "admission", "auto_admit", "allow_unencrypted", "devices", "setuid"),
        *("manifest", "name", "refuse", "skip", "allow", "strip", "keep", f"sha256:{HEX}", HEX),
    ],
    "tar.dict": [
        *("ustar\0", "ustar  \0", "00", "0000644\0", "0000000\0", "00000000000\0", "\x80"),
        *("\xff", "path=", "linkpath=", "size=", "uid=", "gid=", "mtime=", "SCHILY.xattr."),
        *("SCHILY.xattr.user.x=", "SCHILY.xattr.security.capability=", "GNU.sparse."),
        *("././@LongLink", ".wh.", ".wh..wh..opq", "../", "/", "./", "..", "\0" * 8),
        *("30 path=", "\n"),
    ],
}


def write_seeds(seeds: Mapping[str, list[bytes]]) -> int:
    """Replace every target's ``seed-<sha256 prefix>`` files; how many were written."""
    written = 0
    for name, inputs in seeds.items():
        directory = CORPORA / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for data in inputs:
            (directory / f"seed-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
            written += 1
    return written


def main() -> int:
    seeds: Seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _tpm(seeds)
        _image(seeds, work)
        _tars(seeds)
        _oci(seeds, work)
        _toml(seeds)
        _requests(seeds)
        _kubernetes(seeds)
        _audit(seeds)
    missing = sorted(set(TARGETS) - set(seeds))
    if missing:
        raise SystemExit(f"seeds: no seeds for {', '.join(missing)}")
    write_dictionaries()
    print(f"seeds: wrote {write_seeds(seeds)} seed files in {CORPORA}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
