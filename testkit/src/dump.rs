//! Working DUMP payloads and RDB files over, as a hostile client could:
//! both carry only a CRC-64 that anyone can recompute, so the module must
//! refuse what it cannot trust. Used by the persistence, replication,
//! cluster and forged-input tests, which take payloads with [`dump`].
//!
//! A DUMP payload is the serialized value, 2 bytes of RDB version and 8
//! bytes of CRC-64 (little endian). A value of the module's type is
//! `RDB_TYPE_MODULE_2` (7), the module id (0x81 + 8 bytes), the kind (a
//! number: 0 for a mutex, 1 for a grant set in one string), then fields
//! each tagged with an opcode (2 for numbers, signed ones too; 5 string), then the
//! EOF opcode 0. Numbers use Redis's length encoding ([`encode_len`]).

use redis::{Connection, Value};

use crate::cmd::call_str;

/// `DUMP key`: the payload of a key that exists.
pub fn dump(c: &mut Connection, key: &str) -> Vec<u8> {
    match call_str(c, &["DUMP", key]).unwrap() {
        Value::BulkString(b) => b,
        other => panic!("DUMP {key}: {other:?}"),
    }
}

/// Redis's CRC-64 (Jones polynomial, reflected, as in `crc64.c`).
pub fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut crc = 0u64;
    for &byte in data {
        crc ^= u64::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The serialized value inside a DUMP payload, after checking that this
/// CRC-64 agrees with the server's.
pub fn payload_value(payload: &[u8]) -> &[u8] {
    assert!(payload.len() > 10, "a DUMP payload has a 10-byte footer");
    assert_eq!(
        crc64(&payload[..payload.len() - 8]).to_le_bytes(),
        payload[payload.len() - 8..],
        "the CRC-64 helper agrees with the server"
    );
    &payload[..payload.len() - 10]
}

/// A DUMP payload for `value`, with `original`'s RDB version and a fresh
/// CRC-64.
pub fn with_footer(value: &[u8], original: &[u8]) -> Vec<u8> {
    let mut out = value.to_vec();
    out.extend_from_slice(&original[original.len() - 10..original.len() - 8]);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Redis's length encoding (`rdbSaveLen`), which module numbers use too.
pub fn encode_len(n: u64) -> Vec<u8> {
    if n < 1 << 6 {
        vec![n as u8]
    } else if n < 1 << 14 {
        vec![0x40 | (n >> 8) as u8, n as u8]
    } else if n <= u64::from(u32::MAX) {
        let mut v = vec![0x80];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v
    } else {
        let mut v = vec![0x81];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }
}

/// Replaces the token inside a DUMP payload (UINT opcode 2, then 0x81 + 8
/// bytes big endian) and fixes the checksum.
pub fn forge_token(payload: &[u8], from: u64, to: u64) -> Vec<u8> {
    assert!(
        from >= 1 << 32 && to >= 1 << 32,
        "both need the 8-byte encoding"
    );
    let mut needle = vec![2u8];
    needle.extend_from_slice(&encode_len(from));
    let mut value = payload_value(payload).to_vec();
    let at = find(&value, &needle).expect("token not found in the DUMP payload");
    value[at + 2..at + 10].copy_from_slice(&to.to_be_bytes());
    with_footer(&value, payload)
}

/// The fields of a reservation value, to build payloads the server never
/// wrote (empty or huge holders, counts out of range).
pub struct Fields<'a> {
    pub holder: &'a [u8],
    pub token: u64,
    pub acquired_at_ms: i64,
    pub renewals: u64,
}

/// A DUMP payload for `fields`, with the type header (type byte and module
/// id) and footer taken from a real payload `like`.
pub fn payload_with(like: &[u8], fields: &Fields<'_>) -> Vec<u8> {
    let value = payload_value(like);
    // Type byte, then 0x81 + the 8-byte module id.
    let header = &value[..10];
    let mut v = header.to_vec();
    // Encoding 2: the kind first, 0 for a mutex.
    v.extend_from_slice(&[2, 0]);
    v.push(5);
    v.extend_from_slice(&encode_len(fields.holder.len() as u64));
    v.extend_from_slice(fields.holder);
    v.push(2);
    v.extend_from_slice(&encode_len(fields.token));
    // RedisModule_SaveSigned stores the bits as an unsigned number.
    v.push(2);
    v.extend_from_slice(&encode_len(fields.acquired_at_ms as u64));
    v.push(2);
    v.extend_from_slice(&encode_len(fields.renewals));
    v.push(0);
    with_footer(&v, like)
}

/// An RDB file with every 8-byte encoded `from` replaced by `to` (a value
/// and the token counter saved as aux data carry the same token) and its
/// closing CRC-64 recomputed. Panics when `from` does not occur.
pub fn forge_rdb_token(file: &[u8], from: u64, to: u64) -> Vec<u8> {
    let needle = encode_len(from);
    let replacement = encode_len(to);
    assert_eq!(needle.len(), 9, "the 8-byte encoding");
    assert_eq!(replacement.len(), 9, "the 8-byte encoding");
    let mut body = file[..file.len() - 8].to_vec();
    let mut found = 0;
    while let Some(at) = find(&body, &needle) {
        body[at..at + 9].copy_from_slice(&replacement);
        found += 1;
    }
    assert!(found > 0, "token {from} not found in the RDB file");
    let crc = crc64(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_redis_check_value() {
        // crc64.c's own test vector.
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(encode_len(5), vec![5]);
        assert_eq!(encode_len(300), vec![0x41, 0x2c]);
        assert_eq!(encode_len(70_000), vec![0x80, 0, 1, 0x11, 0x70]);
        assert_eq!(encode_len(1 << 40).len(), 9);
    }
}
