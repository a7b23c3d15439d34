//! A small, fast, unkeyed hasher for the filters' lookup tables (callers by identity, metric
//! handles by label indices), which are hashed on every request.
//!
//! The tables are built from the configuration and never grow from request data, so an attacker
//! who picks colliding lookup keys only lengthens the probe of their own lookup: a keyed hash
//! (std's SipHash) buys nothing here and costs several times more per byte in Wasm.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's mixing step (as in rustc), over 8-byte words.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Loads 8 bytes as a word (a fixed-size copy: one load, no `memcpy` call in Wasm).
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    for (d, s) in w.iter_mut().zip(bytes) {
        *d = *s;
    }
    u64::from_le_bytes(w)
}

/// The 8-byte word of `bytes` at `at` (zero-padded past the end).
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    match bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    {
        Some(w) => u64::from_le_bytes(w),
        None => word(bytes.get(at..).unwrap_or_default()),
    }
}

/// The hash of a byte string: its length and four of its words (the first, the middle and the
/// last two). Identities share their `spiffe://<td>/ns/` start and differ at the end, so these
/// words tell them apart while the hash stays a few instructions; equal hashes are told apart by
/// [`bytes_eq`] in [`BytesTable`], so a collision costs a comparison, never a wrong answer.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FastHasher::default();
    let n = bytes.len();
    h.add(n as u64);
    if n <= 16 {
        h.add(word_at(bytes, 0));
        h.add(word_at(bytes, 8));
    } else {
        h.add(word_at(bytes, 0));
        h.add(word_at(bytes, n / 2 - 4));
        h.add(word_at(bytes, n - 16));
        h.add(word_at(bytes, n - 8));
    }
    h.0
}

/// Equality of byte strings a word at a time, from the end (where identities differ); the byte
/// loop of Wasm's `memcmp` costs several instructions per byte. The first word overlaps the
/// others where the length is not a multiple of 8, which equality does not mind.
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return word(a) == word(b);
    }
    let mut at = n - 8;
    loop {
        if word_at(a, at) != word_at(b, at) {
            return false;
        }
        if at == 0 {
            return true;
        }
        at = at.saturating_sub(8);
    }
}

/// A table by byte-string key (identities): one small hash, a linear probe of an open-addressed
/// slot array (at most half full) and one word-wise comparison per candidate with the same hash.
#[derive(Debug, Clone)]
pub struct BytesTable<V> {
    /// Entry index + 1, or 0 for an empty slot; the length is a power of two.
    slots: Vec<u32>,
    /// Hash, key, value.
    entries: Vec<(u64, Box<[u8]>, V)>,
}

impl<V> Default for BytesTable<V> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<V> BytesTable<V> {
    /// The entry index of `key`, if present.
    fn find(&self, h: u64, key: &[u8]) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = (h as usize) & mask;
        loop {
            let slot = *self.slots.get(at)?;
            let i = (slot as usize).checked_sub(1)?;
            if let Some((eh, ek, _)) = self.entries.get(i) {
                if *eh == h && bytes_eq(ek, key) {
                    return Some(i);
                }
            }
            at = (at + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = (self.entries.len() * 2 + 2).next_power_of_two().max(8);
        let mut slots = vec![0u32; size];
        let mask = size - 1;
        for (i, (h, _, _)) in self.entries.iter().enumerate() {
            let mut at = (*h as usize) & mask;
            while slots.get(at).is_some_and(|s| *s != 0) {
                at = (at + 1) & mask;
            }
            if let Some(s) = slots.get_mut(at) {
                *s = u32::try_from(i + 1).unwrap_or(u32::MAX);
            }
        }
        self.slots = slots;
    }

    /// Adds `key` (or replaces its value).
    pub fn insert(&mut self, key: Box<[u8]>, value: V) {
        let h = hash_bytes(&key);
        if let Some(i) = self.find(h, &key) {
            if let Some(e) = self.entries.get_mut(i) {
                e.2 = value;
            }
            return;
        }
        self.entries.push((h, key, value));
        if self.entries.len() * 2 > self.slots.len() {
            self.grow();
        } else {
            let mask = self.slots.len() - 1;
            let mut at = (h as usize) & mask;
            while self.slots.get(at).is_some_and(|s| *s != 0) {
                at = (at + 1) & mask;
            }
            let n = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
            if let Some(s) = self.slots.get_mut(at) {
                *s = n;
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let i = self.find(hash_bytes(key), key)?;
        self.entries.get(i).map(|e| &e.2)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> FromIterator<(Box<[u8]>, V)> for BytesTable<V> {
    fn from_iter<I: IntoIterator<Item = (Box<[u8]>, V)>>(iter: I) -> Self {
        let mut t = Self::default();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

/// A map from `u64` keys to small values, open-addressed (at most half full): a lookup is a
/// multiply and a short linear probe.
#[derive(Debug, Clone, Default)]
pub struct U64Map<V> {
    /// (key, value); `None` is an empty slot; the length is a power of two.
    slots: Vec<Option<(u64, V)>>,
    len: usize,
}

impl<V: Copy> U64Map<V> {
    #[inline]
    fn start(key: u64, mask: usize) -> usize {
        (key.wrapping_mul(SEED) >> 32) as usize & mask
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<V> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = Self::start(key, mask);
        loop {
            match self.slots.get(at)? {
                Some((k, v)) if *k == key => return Some(*v),
                Some(_) => at = (at + 1) & mask,
                None => return None,
            }
        }
    }

    /// Sets the value of `key`.
    pub fn insert(&mut self, key: u64, value: V) {
        if (self.len + 1) * 2 > self.slots.len() {
            let old = std::mem::take(&mut self.slots);
            self.slots = vec![None; (old.len() * 2).max(16)];
            self.len = 0;
            for (k, v) in old.into_iter().flatten() {
                self.insert(k, v);
            }
        }
        let mask = self.slots.len() - 1;
        let mut at = Self::start(key, mask);
        while let Some(slot) = self.slots.get_mut(at) {
            match slot {
                Some((k, v)) if *k == key => {
                    *v = value;
                    return;
                }
                Some(_) => at = (at + 1) & mask,
                None => {
                    *slot = Some((key, value));
                    self.len += 1;
                    return;
                }
            }
        }
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_maps_keep_every_key() {
        let mut m: U64Map<Option<u32>> = U64Map::default();
        assert_eq!(m.get(7), None);
        for k in 0..5000u64 {
            m.insert(k << 16 | 3, Some(k as u32));
        }
        m.insert(1 << 16 | 3, None);
        assert_eq!(m.get(1 << 16 | 3), Some(None));
        assert_eq!(m.get(4999 << 16 | 3), Some(Some(4999)));
        assert_eq!(m.get(5000 << 16 | 3), None);
        m.clear();
        assert_eq!(m.get(2 << 16 | 3), None);
    }

    #[test]
    fn colliding_keys_are_told_apart() {
        // Same length, first, middle and last words: the same hash.
        let a = b"spiffe://cluster.local/ns/aa/sa/caller-00000001".to_vec();
        let mut b = a.clone();
        b[27] = b'b';
        assert_eq!(hash_bytes(&a), hash_bytes(&b));
        let mut t = BytesTable::default();
        t.insert(a.clone().into(), 1);
        assert_eq!(t.get(&b), None);
        t.insert(b.clone().into(), 2);
        assert_eq!((t.get(&a), t.get(&b)), (Some(&1), Some(&2)));
    }

    #[test]
    fn bytes_tables_find_exactly_their_keys() {
        let mut t: BytesTable<usize> = BytesTable::default();
        for i in 0..3000 {
            t.insert(
                format!("spiffe://cluster.local/ns/shop/sa/s-{i}")
                    .into_bytes()
                    .into(),
                i,
            );
        }
        assert_eq!(t.len(), 3000);
        assert_eq!(
            t.get(b"spiffe://cluster.local/ns/shop/sa/s-2999"),
            Some(&2999)
        );
        assert_eq!(t.get(b"spiffe://cluster.local/ns/shop/sa/s-3000"), None);
        assert_eq!(
            t.get(b"spiffe://cluster.local/ns/shop/sa/s-299"),
            Some(&299)
        );
        assert_eq!(t.get(b""), None);
        t.insert(b"spiffe://cluster.local/ns/shop/sa/s-7".to_vec().into(), 70);
        assert_eq!(t.get(b"spiffe://cluster.local/ns/shop/sa/s-7"), Some(&70));
        assert_eq!(t.len(), 3000);
        for (a, b, eq) in [
            (&b""[..], &b""[..], true),
            (b"abcdefgh", b"abcdefgh", true),
            (b"abcdefghi", b"abcdefghj", false),
            (b"abcdefgh", b"abcdefgi", false),
            (b"abc", b"abcd", false),
            (b"a\0", b"a", false),
        ] {
            assert_eq!(bytes_eq(a, b), eq, "{a:?} {b:?}");
        }
    }

    #[test]
    fn lookups_by_bytes_find_what_was_inserted() {
        let mut m: FastMap<Box<[u8]>, usize> = FastMap::default();
        for i in 0..3000 {
            m.insert(
                format!("spiffe://cluster.local/ns/shop/sa/s-{i}")
                    .into_bytes()
                    .into(),
                i,
            );
        }
        assert_eq!(
            m.get(&b"spiffe://cluster.local/ns/shop/sa/s-2999"[..]),
            Some(&2999)
        );
        assert_eq!(
            m.get(&b"spiffe://cluster.local/ns/shop/sa/s-3000"[..]),
            None
        );
        assert_eq!(m.get(&b""[..]), None);
    }
}
