"""ADB wire format pieces the loopback device needs: packet headers, adb's RSA public key format, token signatures.

References: AOSP adb/protocol.txt (packets), adb/SYNC.TXT and file_sync_protocol.h (sync service),
libcrypto_utils/android_pubkey.c (key struct), adb_auth (PKCS#1 v1.5 over the 20-byte token, SHA-1 DigestInfo).
"""

from __future__ import annotations

import base64
import struct

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_STLS = 0x534C5453

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3

HEADER = struct.Struct("<6I")
NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY", A_CLSE: "CLSE", A_WRTE: "WRTE",
         A_AUTH: "AUTH", A_STLS: "STLS"}

_PUBKEY = struct.Struct("<LL256s256sL")


def pack(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """Header + payload as one buffer (one send, so no Nagle stall on our side)."""
    checksum = sum(data) & 0xFFFFFFFF
    return HEADER.pack(cmd, arg0, arg1, len(data), checksum, cmd ^ 0xFFFFFFFF) + data


def unpack_header(raw: bytes) -> tuple[int, int, int, int, int, int]:
    cmd, arg0, arg1, length, checksum, magic = HEADER.unpack(raw)
    if magic != cmd ^ 0xFFFFFFFF:
        raise ValueError(f"bad ADB header magic for command {cmd:#x}")
    return cmd, arg0, arg1, length, checksum, magic


def decode_adb_public_key(blob: bytes):
    """adb's ``RSAPublicKey`` struct (base64, optionally followed by `` user@host``) → a cryptography public key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    text = blob.rstrip(b"\0").split(b" ", 1)[0]
    words, _n0inv, modulus, _rr, exponent = _PUBKEY.unpack(base64.b64decode(text))
    if words != 64:
        raise ValueError(f"unsupported adb key size: {words} words")
    n = int.from_bytes(modulus, "little")
    return rsa.RSAPublicNumbers(exponent, n).public_key()


def verify_token_signature(public_key, token: bytes, signature: bytes) -> bool:
    """True if ``signature`` is PKCS#1 v1.5 of the 20-byte ``token`` taken as a SHA-1 digest (what adbd checks)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    try:
        public_key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except (InvalidSignature, ValueError):
        return False
