//! The Proxy-Wasm "pairs" serialization (header maps, local-reply headers, map and list property
//! values), from `meshguard-abi-pairs`, in the owned forms the host keeps.

use meshguard_abi_pairs::Pairs;

/// Serializes pairs in the ABI layout.
pub fn serialize<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let pairs: Vec<(&[u8], &[u8])> = pairs.into_iter().collect();
    meshguard_abi_pairs::serialize(&pairs)
}

/// Parses the ABI layout. Malformed input yields `None` (Envoy's `PairsUtil::toPairs` returns an
/// empty list in that case).
pub fn parse(buf: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let pairs = Pairs::checked(buf)?;
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
    )
}
