"""Signs requests with the `http-message-signatures` package (PyPI), for the e2e
suite: an RFC 9421 implementation nhi-guard's authors did not write.

Reads a JSON list of jobs on stdin and prints, for each, the request headers after
signing (the package adds Signature-Input, Signature and, with a body, Content-Digest).
A job: method, url, headers (object), body (text, optional), alg ("hmac-sha256" with
"secret" in base64, or "ed25519" with "private_key" as the 32 bytes of the RFC 8032
seed in base64url), keyid, components, created (Unix seconds), expires, nonce, label,
include_alg.
"""

import base64
import datetime
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms


class Message:
    """The request interface the package reads: an upper-case method, an absolute
    URL, and headers it can read and write."""

    def __init__(self, method, url, headers):
        self.method = method
        self.url = url
        self.headers = headers


class OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_private_key(self, key_id):
        return self.key

    def resolve_public_key(self, key_id):
        return None


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def when(seconds):
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def sign(job):
    if job["alg"] == "hmac-sha256":
        algorithm, key = algorithms.HMAC_SHA256, base64.b64decode(job["secret"])
    elif job["alg"] == "ed25519":
        algorithm, key = algorithms.ED25519, Ed25519PrivateKey.from_private_bytes(b64url(job["private_key"]))
    else:
        raise ValueError("unknown alg " + job["alg"])
    message = Message(job["method"], job["url"], dict(job.get("headers", {})))
    body = job.get("body")
    HTTPMessageSigner(signature_algorithm=algorithm, key_resolver=OneKey(key)).sign(
        message,
        key_id=job["keyid"],
        created=when(job.get("created")),
        expires=when(job.get("expires")),
        nonce=job.get("nonce"),
        label=job.get("label"),
        include_alg=job.get("include_alg", True),
        covered_component_ids=tuple(job["components"]),
        body=None if body is None else body.encode(),
    )
    return message.headers


def main():
    json.dump([sign(job) for job in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
