//! Canonical JSON bytes (the form every digest and ledger leaf is computed over) and sha256 digests.
//!
//! The encoding follows RFC 8785 (JCS) for the values tiergate produces: object members sorted
//! by key, no insignificant whitespace, strings escaped minimally as serde_json does, integers
//! written plainly and floats in their shortest round-trip form. (JCS orders keys by UTF-16 code
//! units, we by UTF-8 bytes; the two differ only for keys mixing astral and high-BMP characters,
//! which no tiergate key does.) It is defined once, here, so that an auditor can reproduce it.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Serialises `value` canonically.
pub fn to_canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(member, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail: no I/O, no non-string keys.
    serde_json::to_writer(&mut *out, value).unwrap_or_default();
}

/// `sha256:<hex>` of the given bytes: the digest format recorded everywhere.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_sorted_and_whitespace_removed() {
        let value = json!({"b": [1, {"z": true, "a": null}], "a": "x\"y", "c": 1.5});

        let bytes = to_canonical_bytes(&value);

        assert_eq!(String::from_utf8(bytes).unwrap(), r#"{"a":"x\"y","b":[1,{"a":null,"z":true}],"c":1.5}"#);
    }

    #[test]
    fn key_order_of_the_input_does_not_change_the_digest() {
        let one: Value = serde_json::from_str(r#"{"x": 1, "y": {"p": 2, "q": 3}}"#).unwrap();
        let two: Value = serde_json::from_str(r#"{"y": {"q": 3, "p": 2}, "x": 1}"#).unwrap();

        assert_eq!(sha256_digest(&to_canonical_bytes(&one)), sha256_digest(&to_canonical_bytes(&two)));
    }

    #[test]
    fn digest_is_sha256_of_the_bytes() {
        // sha256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(sha256_digest(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
