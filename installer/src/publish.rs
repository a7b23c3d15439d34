//! `meshctl publish`: each filter's `.wasm` packaged as an OCI image Istio's agent accepts and
//! pushed to a registry, with credentials from the usual docker config; with `--services`, also
//! the reference services (user-service, order-service, payment-service), each an OCI image of
//! its one static binary that any container runtime runs (`install --image-registry` then uses
//! them).
//!
//! Istio's agent fetches `oci://` modules itself (istio `pkg/wasm/imagefetcher.go`) and accepts
//! three layouts; meshctl builds the "compat" OCI one, the same a `FROM scratch` image with
//! `COPY plugin.wasm ./` has: an OCI image manifest whose last (here: only) layer has media type
//! `application/vnd.oci.image.layer.v1.tar+gzip` and is a tar.gz holding `plugin.wasm`. The
//! `sha256` Istio compares for an `oci://` URL is the **image manifest's digest**, not the
//! `.wasm` file's (`pkg/wasm/cache.go`: `PrepareFetch` returns the manifest digest), so that is
//! what `publish` prints.
//!
//! The distribution API (blob and manifest uploads, basic and bearer-token authentication) is
//! oci-client's, and the docker config lookup with its credential helpers is
//! docker_credential's. What is left here is what no crate does for us: the image itself, built
//! byte for byte reproducibly (a tar of one file and a gzip of stored blocks), so that the same
//! `.wasm` always has the same manifest digest, and the same service binary the same image.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Media type of the image manifest meshctl pushes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of its config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of its one layer: what Istio's "compat" OCI variant requires of the last layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file Istio looks for in that layer.
pub const WASM_FILE_IN_LAYER: &str = "plugin.wasm";

/// The filters `publish` pushes: (repository name, `.wasm` file, `install` flag).
pub const FILTERS: [(&str, &str, &str); 2] = [
    ("meshguard-authz", "meshguard_authz.wasm", "--authz-module"),
    (
        "meshguard-metrics",
        "meshguard_metrics.wasm",
        "--metrics-module",
    ),
];

/// The reference services `publish --services` pushes: (repository name = service, binary file,
/// port it listens on). Each becomes `REGISTRY/PATH/<service>:TAG`.
pub const SERVICES: [(&str, &str, u16); 3] = [
    ("user-service", "user-service", 5000),
    ("order-service", "order-service", 5000),
    ("payment-service", "payment-service", 5000),
];

/// The command that builds the reference services' static binaries where `meshctl publish
/// --services` looks for them by default (`scripts/test.sh` builds them there too).
pub const BUILD_SERVICES: &str =
    "cargo build --profile services --target x86_64-unknown-linux-musl \
     --target-dir target/services -p meshguard-reference-services";
/// Where [`BUILD_SERVICES`] leaves the binaries: `meshctl publish`'s default `--services-dir`.
pub const DEFAULT_SERVICES_DIR: &str = "target/services/x86_64-unknown-linux-musl/services";
/// The user and group a service image runs as (no root; the Deployments' own
/// `runAsUser`/`runAsNonRoot` settings win where they set one).
pub const SERVICE_USER: &str = "65532:65532";

/// The command that builds the filters where `meshctl publish` looks for them by default
/// (`scripts/demo.sh` and `scripts/test.sh` build them there too).
pub const BUILD_FILTERS: &str = "cargo build --profile wasm --target wasm32-wasip1 \
     --target-dir target/filters -p meshguard-authz -p meshguard-metrics";
/// Where [`BUILD_FILTERS`] leaves the modules: `meshctl publish`'s default `--filters-dir`.
pub const DEFAULT_FILTERS_DIR: &str = "target/filters/wasm32-wasip1/wasm";

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}: {source}\n  fix: build the filters first: {} (or scripts/demo.sh; or pass --filters-dir)", BUILD_FILTERS)]
    ReadModule {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly module (no \\0asm header)")]
    NotWasm { path: PathBuf },
    #[error("cannot read {path}: {source}\n  fix: build the reference services first: {} (or scripts/test.sh; or pass --services-dir)", BUILD_SERVICES)]
    ReadService {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux executable (no ELF header)")]
    NotElf { path: PathBuf },
    #[error("`{0}` is not REGISTRY/PATH (e.g. europe-docker.pkg.dev/my-project/meshguard or localhost:5000/meshguard)")]
    Repository(String),
    #[error("`{0}` is not a valid tag (letters, digits, `_`, `.`, `-`; at most 128)")]
    Tag(String),
    #[error("cannot read the docker config {path}: {message}")]
    DockerConfig { path: PathBuf, message: String },
    #[error("no credentials for {registry} from the docker config {path}: {message}")]
    Credentials {
        path: PathBuf,
        registry: String,
        message: String,
    },
    #[error("pushing {reference}: {message}{}", hint.as_ref().map(|h| format!("\n  fix: {h}")).unwrap_or_default())]
    Registry {
        reference: String,
        message: String,
        hint: Option<String>,
    },
    #[error("the registry stored the manifest of {reference} as {got}, not {want}")]
    DigestMismatch {
        reference: String,
        want: String,
        got: String,
    },
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A ustar archive holding one regular file `name` (mode 0644, owner 0, time 0: reproducible).
fn tar_one(name: &str, content: &[u8], mode: u32) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    };
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(s.as_bytes());
    let mut out = Vec::with_capacity(512 + content.len() + 1536);
    out.extend_from_slice(&header);
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out
}

/// gzip (RFC 1952) of `data` with stored deflate blocks: no compression needed, every gzip
/// reader reads it, and the result is byte-for-byte reproducible.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        // chunks of at most 65 535 bytes: the length fits in a u16.
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    // ISIZE is the length modulo 2^32.
    out.extend_from_slice(&((data.len() & 0xffff_ffff) as u32).to_le_bytes());
    out
}

/// One filter as an OCI image: the blobs and the manifest, exactly as pushed.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// The image of a `.wasm` module.
    pub fn of_wasm(wasm: &[u8]) -> Image {
        let tar = tar_one(WASM_FILE_IN_LAYER, wasm, 0o644);
        let config = json!({
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
        });
        Image::of_layer(&tar, &config)
    }

    /// The image of a service: its static Linux binary `/<name>` (mode 0755) as the only file
    /// and the entrypoint, listening on `port`, run as [`SERVICE_USER`].
    pub fn of_binary(name: &str, binary: &[u8], port: u16) -> Image {
        let tar = tar_one(name, binary, 0o755);
        let mut exposed = serde_json::Map::new();
        exposed.insert(format!("{port}/tcp"), json!({}));
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": [format!("/{name}")],
                "ExposedPorts": exposed,
                "Env": [format!("PORT={port}")],
                "User": SERVICE_USER,
            },
            "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
        });
        Image::of_layer(&tar, &config)
    }

    /// An image of one layer (`tar`, stored as gzip) and `config`.
    fn of_layer(tar: &[u8], config: &serde_json::Value) -> Image {
        let layer = gzip_stored(tar);
        let config = config.to_string().into_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": digest(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Image {
            config,
            layer,
            manifest,
        }
    }

    /// The manifest digest: the `sha256` Istio compares (hex, without `sha256:`).
    pub fn sha256(&self) -> String {
        digest(&self.manifest)
            .trim_start_matches("sha256:")
            .to_owned()
    }
}

/// `REGISTRY/PATH` split into the registry host (with port) and the repository path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    pub fn parse(s: &str) -> Result<Repository, PublishError> {
        let s = s.trim_start_matches("oci://").trim_end_matches('/');
        let (registry, path) = s
            .split_once('/')
            .ok_or_else(|| PublishError::Repository(s.to_owned()))?;
        let host_ok = !registry.is_empty()
            && (registry.contains('.') || registry.contains(':') || registry == "localhost")
            && registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        let path_ok = !path.is_empty()
            && path.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !host_ok || !path_ok {
            return Err(PublishError::Repository(s.to_owned()));
        }
        Ok(Repository {
            registry: registry.to_owned(),
            path: path.to_owned(),
        })
    }
}

fn check_tag(tag: &str) -> Result<(), PublishError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PublishError::Tag(tag.to_owned()))
    }
}

/// Basic credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
}

/// Credentials for `registry` from the docker config at `path`, as docker itself looks them up
/// (`credHelpers[registry]`, else `auths[registry]`, else `credsStore`; docker_credential runs
/// the helpers). No file, or nothing stored for the registry: none, and the push goes
/// anonymously.
pub fn credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, PublishError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishError::DockerConfig {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
    };
    let fail = |message: String| PublishError::Credentials {
        path: path.to_owned(),
        registry: registry.to_owned(),
        message,
    };
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), registry) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credentials { username, password }))
        }
        // An identity token is exchanged for an access token by docker's own login flow, which
        // the distribution API's basic and bearer challenges do not cover.
        Ok(DockerCredential::IdentityToken(_)) => Err(fail(
            "it holds an identity token; log in with a username and password (or a credential \
             helper that returns them) instead"
                .to_owned(),
        )),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        // The helper protocol's answer for "nothing stored for this server".
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(CredentialRetrievalError::ConfigReadError) => Err(PublishError::DockerConfig {
            path: path.to_owned(),
            message: "not a docker config (JSON with auths, credHelpers or credsStore)".to_owned(),
        }),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// What a failed registry request means for the user.
fn registry_error(reference: &Reference, e: &OciDistributionError) -> PublishError {
    let auth_hint = "check the credentials for this registry in the docker config (`docker \
                     login`) and that they may push to this repository";
    let hint = match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => Some(auth_hint.to_owned()),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Some(auth_hint.to_owned()),
        OciDistributionError::RequestError(_) => Some(
            "check that the registry is reachable from here; a registry without TLS (e.g. on \
             localhost) needs --plain-http"
                .to_owned(),
        ),
        _ => None,
    };
    PublishError::Registry {
        reference: reference.whole(),
        message: crate::causes::with_causes(e),
        hint,
    }
}

/// Pushes one image (its blobs, then its manifest under `reference`) and checks that the
/// registry files the manifest under the digest meshctl computed.
async fn push(
    client: &oci_client::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    image: &Image,
) -> Result<(), PublishError> {
    let fail = |e: OciDistributionError| registry_error(reference, &e);
    client
        .auth(reference, auth, RegistryOperation::Push)
        .await
        .map_err(fail)?;
    for blob in [&image.layer, &image.config] {
        client
            .push_blob(reference, blob.clone(), &digest(blob))
            .await
            .map_err(fail)?;
    }
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    client
        .push_manifest_raw(reference, image.manifest.clone(), content_type)
        .await
        .map_err(fail)?;
    let stored = client
        .fetch_manifest_digest(reference, auth)
        .await
        .map_err(fail)?;
    let want = digest(&image.manifest);
    if stored != want {
        return Err(PublishError::DigestMismatch {
            reference: reference.whole(),
            want,
            got: stored,
        });
    }
    Ok(())
}

/// One pushed image: a filter module or a reference service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// `meshguard-authz`, `meshguard-metrics`, or a service (`user-service`, …).
    pub name: String,
    /// The `install` flag taking its URL (a module's); `None` for a service.
    pub flag: Option<String>,
    /// `oci://REGISTRY/PATH/NAME:TAG`.
    pub url: String,
    /// The manifest digest (hex): the `sha256` to pass to `install` for a module.
    pub sha256: String,
    /// Size of the `.wasm` or of the binary.
    pub bytes: usize,
}

impl Published {
    /// The image reference, as a Deployment names it (the URL without `oci://`).
    pub fn image(&self) -> &str {
        self.url.trim_start_matches("oci://")
    }
}

/// What `publish` does.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub repository: String,
    pub tag: String,
    pub filters_dir: PathBuf,
    /// Also the reference services, their binaries from this folder.
    pub services_dir: Option<PathBuf>,
    pub plain_http: bool,
    /// The docker config to take credentials from (default: [`docker_config_path`]).
    pub docker_config: Option<PathBuf>,
}

/// An image to push, with what `publish` reports of it.
struct ToPush {
    name: &'static str,
    flag: Option<&'static str>,
    image: Image,
    bytes: usize,
}

/// The filters' images, from `dir`.
fn filter_images(dir: &Path) -> Result<Vec<ToPush>, PublishError> {
    FILTERS
        .into_iter()
        .map(|(name, file, flag)| {
            let path = dir.join(file);
            let wasm = std::fs::read(&path).map_err(|source| PublishError::ReadModule {
                path: path.clone(),
                source,
            })?;
            if !wasm.starts_with(b"\0asm") {
                return Err(PublishError::NotWasm { path });
            }
            Ok(ToPush {
                name,
                flag: Some(flag),
                image: Image::of_wasm(&wasm),
                bytes: wasm.len(),
            })
        })
        .collect()
}

/// The reference services' images, from `dir`.
fn service_images(dir: &Path) -> Result<Vec<ToPush>, PublishError> {
    SERVICES
        .into_iter()
        .map(|(name, file, port)| {
            let path = dir.join(file);
            let binary = std::fs::read(&path).map_err(|source| PublishError::ReadService {
                path: path.clone(),
                source,
            })?;
            if !binary.starts_with(b"\x7fELF") {
                return Err(PublishError::NotElf { path });
            }
            Ok(ToPush {
                name,
                flag: None,
                image: Image::of_binary(name, &binary, port),
                bytes: binary.len(),
            })
        })
        .collect()
}

/// Packages and pushes both filters, and the reference services when asked. Every file is read
/// and checked before anything is pushed.
pub async fn publish(opts: &PublishOptions) -> Result<Vec<Published>, PublishError> {
    let repo = Repository::parse(&opts.repository)?;
    check_tag(&opts.tag)?;
    let mut images = filter_images(&opts.filters_dir)?;
    if let Some(dir) = &opts.services_dir {
        images.extend(service_images(dir)?);
    }
    let config_path = opts.docker_config.clone().or_else(docker_config_path);
    let creds = match &config_path {
        Some(p) => credentials(p, &repo.registry)?,
        None => None,
    };
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    crate::tls::install_crypto_provider();
    let client = oci_client::Client::new(ClientConfig {
        protocol: if opts.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..ClientConfig::default()
    });
    let mut out = Vec::new();
    for p in images {
        let repository = format!("{}/{}", repo.path, p.name);
        let reference =
            Reference::with_tag(repo.registry.clone(), repository.clone(), opts.tag.clone());
        push(&client, &reference, &auth, &p.image).await?;
        out.push(Published {
            name: p.name.to_owned(),
            flag: p.flag.map(str::to_owned),
            url: format!("oci://{}/{repository}:{}", repo.registry, opts.tag),
            sha256: p.image.sha256(),
            bytes: p.bytes,
        });
    }
    Ok(out)
}

/// The `meshctl install` flags for what was published: each module's URL and sha256, and with
/// the services, the registry and tag their images are under.
pub fn install_flags(published: &[Published], repository: &str, tag: &str) -> String {
    let mut flags: Vec<String> = published
        .iter()
        .filter_map(|p| {
            p.flag
                .as_ref()
                .map(|f| format!("{f} {} {f}-sha256 {}", p.url, p.sha256))
        })
        .collect();
    if published.iter().any(|p| p.flag.is_none()) {
        let repository = repository
            .trim_start_matches("oci://")
            .trim_end_matches('/');
        flags.push(format!("--image-registry {repository} --image-tag {tag}"));
    }
    flags.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;

    #[test]
    fn tar_holds_the_file_at_block_boundaries() {
        let t = tar_one("plugin.wasm", b"\0asmabc", 0o644);
        assert_eq!(t.len(), 512 + 512 + 1024);
        assert_eq!(&t[..11], b"plugin.wasm");
        assert_eq!(&t[100..108], b"0000644\0");
        assert_eq!(&t[512..519], b"\0asmabc");
        assert_eq!(&t[257..262], b"ustar");
    }

    #[test]
    fn gzip_stored_has_header_crc_and_size() {
        let g = gzip_stored(b"hello");
        assert_eq!(&g[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(g[10], 1, "one final stored block");
        assert_eq!(&g[g.len() - 4..], &5u32.to_le_bytes());
        assert_eq!(
            &g[g.len() - 8..g.len() - 4],
            &crc32fast::hash(b"hello").to_le_bytes()
        );
        let big = vec![7u8; 150_000];
        let g = gzip_stored(&big);
        assert_eq!(g.len(), 10 + 3 * 5 + 150_000 + 8);
    }

    #[test]
    fn image_manifest_names_its_blobs() {
        let img = Image::of_wasm(b"\0asm\x01\0\0\0");
        let m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(m["layers"][0]["digest"], digest(&img.layer));
        assert_eq!(m["config"]["digest"], digest(&img.config));
        assert_eq!(img.sha256().len(), 64);
        // Reproducible: the same module, the same digest.
        assert_eq!(Image::of_wasm(b"\0asm\x01\0\0\0").sha256(), img.sha256());
    }

    #[test]
    fn a_service_image_runs_its_binary_as_a_non_root_user() {
        let img = Image::of_binary("user-service", b"\x7fELF...", 5000);
        let c: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(c["config"]["Entrypoint"], json!(["/user-service"]));
        assert_eq!(c["config"]["ExposedPorts"], json!({"5000/tcp": {}}));
        assert_eq!(c["config"]["User"], SERVICE_USER);
        let tar = tar_one("user-service", b"\x7fELF...", 0o755);
        assert_eq!(c["rootfs"]["diff_ids"], json!([digest(&tar)]));
        assert_eq!(&tar[100..108], b"0000755\0", "executable");
        assert_eq!(img.layer, gzip_stored(&tar));
        assert_eq!(
            Image::of_binary("user-service", b"\x7fELF...", 5000).sha256(),
            img.sha256(),
            "reproducible"
        );
    }

    #[test]
    fn install_flags_name_the_modules_and_the_services_registry() {
        let module = Published {
            name: "meshguard-authz".into(),
            flag: Some("--authz-module".into()),
            url: "oci://r.example/m/meshguard-authz:1".into(),
            sha256: "ab".into(),
            bytes: 1,
        };
        let service = Published {
            name: "user-service".into(),
            flag: None,
            url: "oci://r.example/m/user-service:1".into(),
            sha256: "cd".into(),
            bytes: 1,
        };
        assert_eq!(service.image(), "r.example/m/user-service:1");
        assert_eq!(
            install_flags(std::slice::from_ref(&module), "r.example/m", "1"),
            "--authz-module oci://r.example/m/meshguard-authz:1 --authz-module-sha256 ab"
        );
        assert_eq!(
            install_flags(&[module, service], "oci://r.example/m/", "1"),
            "--authz-module oci://r.example/m/meshguard-authz:1 --authz-module-sha256 ab \
             --image-registry r.example/m --image-tag 1"
        );
    }

    #[test]
    fn repositories_and_tags_parse() {
        let r = Repository::parse("oci://127.0.0.1:5000/meshguard/").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "meshguard")
        );
        assert!(Repository::parse("meshguard").is_err());
        assert!(Repository::parse("ghcr.io/Acme").is_err());
        assert!(check_tag("0.1.0").is_ok());
        assert!(check_tag("-x").is_err());
    }

    #[test]
    fn credentials_come_from_auths_in_the_docker_config() {
        let dir = std::env::temp_dir().join(format!("meshctl-dockercfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &path,
            json!({"auths": {"https://reg.example:5000": {"auth": auth}}}).to_string(),
        )
        .unwrap();
        let c = credentials(&path, "reg.example:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
        assert_eq!(credentials(&path, "other.example").unwrap(), None);
        assert_eq!(
            credentials(&dir.join("absent.json"), "x.example").unwrap(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
