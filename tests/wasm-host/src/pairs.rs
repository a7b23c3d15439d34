//! The Proxy-Wasm "pairs" serialization used for header maps, local-response
//! headers and map/list property values.
//!
//! Layout (little-endian), as written by proxy-wasm-cpp-host `PairsUtil::marshalPairs`
//! and read by the Rust SDK's `utils::deserialize_map`:
//!
//! ```text
//! u32 count
//! count x (u32 name_len, u32 value_len)
//! count x (name bytes, 0u8, value bytes, 0u8)
//! ```

/// Serializes pairs in the ABI layout.
pub fn serialize<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let mut count: u32 = 0;
    let mut size = 4usize;
    for (k, v) in pairs.clone() {
        count = count.wrapping_add(1);
        size += 8 + k.len() + 1 + v.len() + 1;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses the ABI layout. Malformed input yields `None` (Envoy's
/// `PairsUtil::toPairs` returns an empty list in that case).
pub fn parse(buf: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let count = read_u32(buf, 0)? as usize;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let header_end = count.checked_mul(8)?.checked_add(4)?;
    if header_end > buf.len() {
        return None;
    }
    for i in 0..count {
        let off = 4 + i * 8;
        sizes.push((
            read_u32(buf, off)? as usize,
            read_u32(buf, off + 4)? as usize,
        ));
    }
    let mut pos = header_end;
    let mut out = Vec::with_capacity(count);
    for (klen, vlen) in sizes {
        let key = buf.get(pos..pos.checked_add(klen)?)?.to_vec();
        pos = pos.checked_add(klen)?;
        if buf.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        let value = buf.get(pos..pos.checked_add(vlen)?)?.to_vec();
        pos = pos.checked_add(vlen)?;
        if buf.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        out.push((key, value));
    }
    Some(out)
}

fn read_u32(buf: &[u8], off: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fixture from the proxy-wasm 0.2.5 SDK's hostcalls.rs utils tests.
    const SERIALIZED: &[u8] = &[
        4, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 10, 0, 0, 0, 11, 0, 0, 0, 10,
        0, 0, 0, 10, 0, 0, 0, 58, 109, 101, 116, 104, 111, 100, 0, 71, 69, 84, 0, 58, 112, 97, 116,
        104, 0, 47, 98, 121, 116, 101, 115, 47, 49, 0, 58, 97, 117, 116, 104, 111, 114, 105, 116,
        121, 0, 104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0, 80, 111, 119, 101, 114,
        101, 100, 45, 66, 121, 0, 112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];
    const MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    #[test]
    fn matches_sdk_fixture() {
        let out = serialize(MAP.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        assert_eq!(out, SERIALIZED);
        let parsed = parse(SERIALIZED).unwrap_or_default();
        assert_eq!(parsed.len(), 4);
        for ((k, v), (ek, ev)) in parsed.iter().zip(MAP) {
            assert_eq!(k.as_slice(), ek.as_bytes());
            assert_eq!(v.as_slice(), ev.as_bytes());
        }
    }

    #[test]
    fn empty_and_malformed() {
        let empty: [(&[u8], &[u8]); 0] = [];
        assert_eq!(serialize(empty.iter().copied()), vec![0, 0, 0, 0]);
        assert_eq!(parse(&[0, 0, 0, 0]), Some(vec![]));
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[1, 0, 0, 0]), None);
        assert_eq!(parse(&[255, 255, 255, 255, 0]), None);
        assert_eq!(parse(&SERIALIZED[..SERIALIZED.len() - 1]), None);
    }
}
