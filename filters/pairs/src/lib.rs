//! The Proxy-Wasm "pairs" serialization, used for header maps, local-reply headers and map and
//! list property values, on both sides of the ABI: the filters write local-reply headers and read
//! header maps with it, and the test host hands maps to the guest with it.
//!
//! Layout (little endian), as proxy-wasm-cpp-host's `PairsUtil::marshalPairs` writes it and the
//! Rust SDK's `utils::deserialize_map` reads it:
//!
//! ```text
//! u32 count
//! count x (u32 name_len, u32 value_len)
//! count x (name bytes, 0u8, value bytes, 0u8)
//! ```
//!
//! Real Envoy is the reference for it: the Envoy suite (tests/envoy) runs the filters' replies and
//! header reads through Envoy's own codec.

/// Serializes (name, value) pairs in the ABI layout.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A map in the pairs serialization, read in place.
///
/// [`Pairs::new`] is lenient, as a filter must be: entries a malformed buffer does not hold are
/// simply not there, and no lookup reads out of bounds or fails loudly. [`Pairs::checked`] is
/// strict, as Envoy's `PairsUtil::toPairs` is: a malformed buffer is no map at all.
#[derive(Debug, Clone, Copy)]
pub struct Pairs<'a> {
    bytes: &'a [u8],
}

impl<'a> Pairs<'a> {
    pub fn new(bytes: &'a [u8]) -> Pairs<'a> {
        Pairs { bytes }
    }

    /// The map, if `bytes` holds every entry its count announces, each name and value followed by
    /// a NUL; `None` otherwise.
    pub fn checked(bytes: &'a [u8]) -> Option<Pairs<'a>> {
        let count = word(bytes, 0)?;
        let mut at = count.checked_mul(8)?.checked_add(4)?;
        if at > bytes.len() {
            return None;
        }
        for i in 0..count {
            for len in [word(bytes, 4 + i * 8)?, word(bytes, 8 + i * 8)?] {
                at = at.checked_add(len)?;
                if bytes.get(at) != Some(&0) {
                    return None;
                }
                at += 1;
            }
        }
        Some(Pairs { bytes })
    }

    /// The first value of `name` (compared exactly: hosts hand header names in lower case).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Every (name, value), in the serialized order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let bytes = self.bytes;
        let count = word(bytes, 0).unwrap_or(0);
        // Sizes follow the count; the data follows the sizes.
        let mut data = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .unwrap_or(usize::MAX);
        (0..count).map_while(move |i| {
            let k = word(bytes, 4 + i * 8)?;
            let v = word(bytes, 8 + i * 8)?;
            let key = bytes.get(data..data.checked_add(k)?)?;
            let value_at = data.checked_add(k)?.checked_add(1)?;
            let value = bytes.get(value_at..value_at.checked_add(v)?)?;
            data = value_at.checked_add(v)?.checked_add(1)?;
            Some((key, value))
        })
    }
}

/// The little-endian u32 at `at`, if the buffer holds it.
fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
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
    const MAP: &[(&[u8], &[u8])] = &[
        (b":method", b"GET"),
        (b":path", b"/bytes/1"),
        (b":authority", b"httpbin.org"),
        (b"Powered-By", b"proxy-wasm"),
    ];

    #[test]
    fn matches_the_sdk_fixture() {
        assert_eq!(serialize(MAP), SERIALIZED);
        let read: Vec<_> = Pairs::checked(SERIALIZED)
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        assert_eq!(read, MAP);
        assert_eq!(Pairs::new(SERIALIZED).get(b":path"), Some(&b"/bytes/1"[..]));
        assert_eq!(Pairs::new(SERIALIZED).get(b":PATH"), None);
    }

    #[test]
    fn empty_and_malformed() {
        assert_eq!(serialize(&[]), vec![0, 0, 0, 0]);
        assert_eq!(
            Pairs::checked(&[0, 0, 0, 0]).map(|p| p.iter().count()),
            Some(0)
        );
        for bad in [
            &[][..],
            &[1, 0, 0, 0],
            &[255, 255, 255, 255, 0],
            &SERIALIZED[..SERIALIZED.len() - 1],
        ] {
            assert!(Pairs::checked(bad).is_none(), "{bad:?}");
        }
        // A NUL missing after a name: strict rejects it, lenient reads what is there.
        let mut no_nul = serialize(&[(b"a", b"b")]);
        no_nul[13] = b'x';
        assert!(Pairs::checked(&no_nul).is_none());
        assert_eq!(Pairs::new(&no_nul).iter().count(), 1);
    }

    #[test]
    fn truncation_never_reads_out_of_bounds() {
        let good = serialize(&[(b":method", b"GET"), (b"a", b"")]);
        assert_eq!(Pairs::new(&good).get(b"a"), Some(&b""[..]));
        for cut in 0..good.len() {
            let _ = Pairs::new(&good[..cut]).iter().count();
            assert!(Pairs::checked(&good[..cut]).is_none(), "cut at {cut}");
        }
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(Pairs::new(&huge).iter().count(), 0);
    }
}
