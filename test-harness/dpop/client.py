"""An independent DPoP client for nhi-guard's e2e tests.

Mints DPoP proofs (RFC 9449) and DPoP-bound access tokens with joserfc, a Python
JOSE implementation that shares no code with the filter: keys, RFC 7638 thumbprints,
`ath`, signatures. The Rust harness (`test_harness::dpop_client`) drives it over
stdin/stdout, one JSON object per line each way.

Requests (`op`):
  key     {"kty": "EC"|"OKP"|"RSA"}             -> {"id", "jwk", "jkt"}
  issuer  {"kid"}                              -> {"jwks"}  (the token signer, ES256)
  token   {"claims", "bind": key id or null}   -> {"token"} (cnf.jkt when bound)
  proof   {"key", "htm", "htu", "token", ...}   -> {"proof"}
  proof_file {as proof, "count", "path"}        -> {"path"} (`token proof` lines, for wrk)
          optional: iat, jti, nonce, typ, alg, header {..}, claims {..} (null deletes),
          private_jwk, jwk_of (embed another key's jwk), tamper, no_ath
"""

import base64
import hashlib
import json
import secrets
import sys
import time
import warnings

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

warnings.simplefilter("ignore")

ALGS = {"EC": "ES256", "OKP": "EdDSA", "RSA": "PS256"}
keys = []
issuer = {}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate(kty):
    if kty == "EC":
        return ECKey.generate_key("P-256")
    if kty == "OKP":
        return OKPKey.generate_key("Ed25519")
    return RSAKey.generate_key(2048)


def op_key(req):
    kty = req.get("kty", "EC")
    key = generate(kty)
    keys.append((kty, key))
    return {"id": len(keys) - 1, "jwk": key.as_dict(private=False), "jkt": key.thumbprint()}


def op_issuer(req):
    key = ECKey.generate_key("P-256")
    issuer["key"] = key
    issuer["kid"] = req.get("kid", "py-issuer")
    public = dict(key.as_dict(private=False), kid=issuer["kid"], alg="ES256", use="sig")
    return {"jwks": {"keys": [public]}}


def op_token(req):
    claims = dict(req["claims"])
    now = int(time.time())
    claims.setdefault("iat", now)
    claims.setdefault("exp", now + 600)
    if req.get("bind") is not None:
        claims["cnf"] = {"jkt": keys[req["bind"]][1].thumbprint()}
    header = {"alg": "ES256", "kid": issuer["kid"], "typ": "JWT"}
    return {"token": jwt.encode(header, claims, issuer["key"], algorithms=["ES256"])}


def op_proof(req):
    kty, key = keys[req["key"]]
    alg = req.get("alg") or ALGS[kty]
    jwk_key = keys[req["jwk_of"]][1] if req.get("jwk_of") is not None else key
    header = {"typ": req.get("typ", "dpop+jwt"), "alg": alg,
              "jwk": jwk_key.as_dict(private=bool(req.get("private_jwk")))}
    for name, value in req.get("header", {}).items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    claims = {"jti": req.get("jti") or b64(secrets.token_bytes(16)), "htm": req["htm"], "htu": req["htu"],
              "iat": req.get("iat") or int(time.time())}
    if req.get("token") is not None and not req.get("no_ath"):
        claims["ath"] = b64(hashlib.sha256(req["token"].encode("ascii")).digest())
    if req.get("nonce") is not None:
        claims["nonce"] = req["nonce"]
    for name, value in req.get("claims", {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    if alg in ("none", "HS256"):
        # No JOSE library signs these for a DPoP proof: written by hand.
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = "" if alg == "none" else b64(hashlib.sha256(signing_input.encode()).digest())
        return {"proof": signing_input + "." + signature}
    proof = jwt.encode(header, claims, key, algorithms=[alg])
    if req.get("tamper"):
        head, payload, signature = proof.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        proof = head + "." + payload + "." + b64(bytes(raw))
    return {"proof": proof}


def op_proof_file(req):
    """`count` proofs for one request (fresh jti each), as `token proof` lines, to `path`."""
    with open(req["path"], "w") as out:
        for _ in range(req["count"]):
            out.write(req["token"] + " " + op_proof(req)["proof"] + "\n")
    return {"path": req["path"]}


OPS = {"key": op_key, "issuer": op_issuer, "token": op_token, "proof": op_proof, "proof_file": op_proof_file}


def main():
    for line in sys.stdin:
        try:
            req = json.loads(line)
            out = OPS[req["op"]](req)
        except Exception as err:  # reported to the harness, which fails the test
            out = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
