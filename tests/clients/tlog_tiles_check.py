#!/usr/bin/env python3
"""Mirrors a tiergate ledger through its C2SP tlog-tiles API and checks it, with nothing but the
standard library: an auditor's independent implementation of RFC 6962 and of the tile layout.

Usage: tlog_tiles_check.py BASE_URL API_KEY   (BASE_URL ends in /v1/ledger/tlog)
Prints one JSON object: the checkpoint's size and root, the root computed from the entry
bundles, and whether every level-0 hash tile matches the entries' leaf hashes.
"""
import base64, hashlib, json, sys, urllib.error, urllib.request

base, key = sys.argv[1:3]


def get(path):
    request = urllib.request.Request(f"{base}/{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as response:
        return response.read()


def n_path(n):
    """The tile index in the spec's form: 1234567 -> x001/x234/567."""
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n > 0:
        parts.insert(0, f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(parts)


def tile_path(kind, n, width):
    return f"tile/{kind}/{n_path(n)}" + ("" if width == 256 else f".p/{width}")


def mth(leaves):
    """RFC 6962 section 2.1 Merkle tree hash over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


note = get("checkpoint").decode()
origin, size, root_b64 = note.split("\n")[:3]
size = int(size)
entries = []
for n in range((size + 255) // 256):
    width = min(256, size - n * 256)
    bundle = get(tile_path("entries", n, width))
    offset = 0
    while offset < len(bundle):
        length = int.from_bytes(bundle[offset:offset + 2], "big")
        entries.append(bundle[offset + 2:offset + 2 + length])
        offset += 2 + length
leaves = [hashlib.sha256(b"\x00" + entry).digest() for entry in entries]
tiles_match = True
for n in range((size + 255) // 256):
    width = min(256, size - n * 256)
    data = get(tile_path(0, n, width))
    tiles_match &= data == b"".join(leaves[n * 256:n * 256 + width])
try:
    get(tile_path(0, (size + 255) // 256, 1))
    beyond = "served"
except urllib.error.HTTPError as error:
    beyond = error.code
print(json.dumps({
    "origin": origin,
    "size": size,
    "entries": len(entries),
    "checkpoint_root": root_b64,
    "computed_root": base64.b64encode(mth(leaves)).decode() if leaves else None,
    "level0_tiles_match_entries": tiles_match,
    "first_entry_index": json.loads(entries[0])["index"] if entries else None,
    "tile_beyond_the_tree": beyond,
}))
