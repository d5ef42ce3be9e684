// Checks a ledger entry's inclusion proof and its checkpoint's signature in the browser, with
// WebCrypto alone (SHA-256, Ed25519): RFC 6962 leaf and node hashes, the RFC 9162 inclusion
// proof check, and a C2SP signed note verified with the key in the page's key field.
"use strict";

const encoder = new TextEncoder();

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error("not hex: " + text);
  return Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
}

function fromBase64(text) {
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to, or an error.
async function rootFromProof(index, size, leaf, proof) {
  if (index >= size) throw new Error("entry " + index + " is outside a tree of " + size);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error("the proof is longer than the tree allows");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(concat([1], p, r));
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await sha256(concat([1], r, p));
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the proof is shorter than the tree needs");
  return r;
}

// A C2SP note verifier key: <name>+<8 hex key id>+<base64(0x01 ‖ 32-byte Ed25519 key)>.
async function parseVerifierKey(text) {
  // The base64 part may itself contain "+": split at the first two only.
  const match = /^([^+\s]+)\+([0-9a-fA-F]{8})\+(\S+)$/.exec(text.trim());
  if (!match) throw new Error("the ledger key is not <name>+<key id>+<key>");
  const [, name, id, encoded] = match;
  const raw = fromBase64(encoded);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error("the ledger key is not an Ed25519 note key");
  const keyHash = (await sha256(concat(encoder.encode(name), [0x0a], raw))).slice(0, 4);
  if (hex(keyHash) !== id.toLowerCase()) throw new Error("the ledger key's id does not match its key");
  const key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, keyHash, key };
}

// Verifies the note's signature by `verifier`; returns the checkpoint's size and root.
async function verifyCheckpoint(note, verifier) {
  const split = note.indexOf("\n\n");
  if (split < 0) throw new Error("the checkpoint is not a signed note");
  const text = note.slice(0, split + 1);
  const signatures = note.slice(split + 2).split("\n").filter((line) => line.length > 0);
  let verified = false;
  for (const line of signatures) {
    const match = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!match || match[1] !== verifier.name) continue;
    const signature = fromBase64(match[2]);
    if (signature.length !== 68 || !equal(signature.slice(0, 4), verifier.keyHash)) continue;
    if (await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, signature.slice(4), encoder.encode(text))) {
      verified = true;
      break;
    }
  }
  if (!verified) throw new Error("the checkpoint carries no valid signature by " + verifier.name);
  const lines = text.split("\n");
  if (lines.length < 4) throw new Error("the checkpoint text is not origin, size and root");
  return { size: BigInt(lines[1]), root: fromBase64(lines[2]) };
}

async function check() {
  const output = document.getElementById("proof-result");
  const data = JSON.parse(document.getElementById("proof-data").textContent);
  output.dataset.state = "pending";
  output.textContent = "Checking…";
  try {
    if (!window.crypto || !crypto.subtle) throw new Error("this browser offers no WebCrypto here (it needs a secure context: https or localhost)");
    const verifier = await parseVerifierKey(document.getElementById("verifier-key").value);
    const checkpoint = await verifyCheckpoint(data.checkpoint, verifier);
    const size = BigInt(data.tree_size);
    if (checkpoint.size !== size) throw new Error("the proof is for a tree of " + size + ", the checkpoint signs " + checkpoint.size);
    const leaf = await sha256(concat([0], encoder.encode(data.entry)));
    const root = await rootFromProof(BigInt(data.index), size, leaf, data.proof.map(fromHex));
    if (!equal(root, checkpoint.root)) throw new Error("the audit path leads to root " + hex(root) + ", not the signed root " + hex(checkpoint.root));
    output.dataset.state = "verified";
    output.textContent =
      "Verified in this browser: entry " + data.index + " (leaf " + hex(leaf).slice(0, 16) + "…) is in the tree of " + size +
      " entries whose root " + hex(root).slice(0, 16) + "… is signed by " + verifier.name + ".";
  } catch (error) {
    output.dataset.state = "failed";
    output.textContent = "Not verified: " + error.message;
  }
}

document.getElementById("check-proof").addEventListener("click", check);
check();
