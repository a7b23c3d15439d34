//! OCI image archives of one static binary, for `ctr images import` on the local cluster's real
//! nodes: the pod sandbox image (`pause`) every node needs before it can start a pod, made here
//! so that a node never pulls anything from outside the machine.
//!
//! An archive is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`; the OCI image
//! spec's `image-layout.md`) as a tar, with one uncompressed layer holding the binary as
//! `/<name>`, which is also the entrypoint. containerd names the imported image by the index's
//! `io.containerd.image.name` annotation.

use ring::digest::{digest, SHA256};
use serde_json::json;

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    let d = digest(&SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One ustar header field holding `value` in octal, NUL-terminated.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    let len = text.len().min(field.len() - 1);
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
}

/// A tar archive (ustar, regular files only, owner root, mtime 0) of `entries`: name (under
/// 100 bytes), content, mode.
pub fn tar(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content, mode) in entries {
        let mut header = [0u8; 512];
        let name = name.as_bytes();
        let len = name.len().min(99);
        header[..len].copy_from_slice(&name[..len]);
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], content.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // The checksum is taken with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    // Two empty blocks end the archive.
    out.resize(out.len() + 1024, 0);
    out
}

/// The OCI image layout archive of `binary` as `/<name>`, its entrypoint, run as `user`
/// (`UID:GID`), named `reference` (`HOST/PATH:TAG`).
pub fn binary_image_archive(reference: &str, name: &str, binary: &[u8], user: &str) -> Vec<u8> {
    let layer = tar(&[(name, binary, 0o755)]);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [format!("/{name}")], "User": user},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string()
    .into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    })
    .to_string()
    .into_bytes();
    let blob = |bytes: &[u8]| format!("blobs/{}", sha256(bytes).replacen(':', "/", 1));
    let (layer_path, config_path, manifest_path) = (blob(&layer), blob(&config), blob(&manifest));
    tar(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", &index, 0o644),
        (&layer_path, &layer, 0o644),
        (&config_path, &config, 0o644),
        (&manifest_path, &manifest, 0o644),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_carry_name_size_and_a_valid_checksum() {
        let t = tar(&[("a", b"hello", 0o755)]);
        assert_eq!(t.len(), 512 + 512 + 1024);
        assert_eq!(&t[..1], b"a");
        assert_eq!(&t[124..135], b"00000000005");
        assert_eq!(&t[100..107], b"0000755");
        let mut h = t[..512].to_vec();
        let stored = String::from_utf8_lossy(&h[148..154]).into_owned();
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        assert_eq!(u64::from_str_radix(&stored, 8).ok(), Some(sum));
        assert_eq!(&t[512..517], b"hello");
    }

    #[test]
    fn the_archive_indexes_its_manifest_under_the_reference() {
        let archive = binary_image_archive("meshguard.invalid/pause:1", "pause", b"\x7fELF", "0:0");
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains(r#""io.containerd.image.name":"meshguard.invalid/pause:1""#));
        assert!(text.contains(r#""Entrypoint":["/pause"]"#));
        assert!(text.contains("blobs/sha256/"));
    }
}
