//! `meshctl publish`: each filter's `.wasm` packaged as an OCI image Istio's agent accepts and
//! pushed to a registry, with credentials from the usual docker config.
//!
//! Istio's agent fetches `oci://` modules itself (istio `pkg/wasm/imagefetcher.go`) and accepts
//! three layouts; meshctl builds the "compat" OCI one, the same a `FROM scratch` image with
//! `COPY plugin.wasm ./` has: an OCI image manifest whose last (here: only) layer has media type
//! `application/vnd.oci.image.layer.v1.tar+gzip` and is a tar.gz holding `plugin.wasm`. The
//! `sha256` Istio compares for an `oci://` URL is the **image manifest's digest**, not the
//! `.wasm` file's (`pkg/wasm/cache.go`: `PrepareFetch` returns the manifest digest), so that is
//! what `publish` prints.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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
    #[error("`{0}` is not REGISTRY/PATH (e.g. europe-docker.pkg.dev/my-project/meshguard or localhost:5000/meshguard)")]
    Repository(String),
    #[error("`{0}` is not a valid tag (letters, digits, `_`, `.`, `-`; at most 128)")]
    Tag(String),
    #[error("cannot read the docker config {path}: {message}")]
    DockerConfig { path: PathBuf, message: String },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    CredentialHelper {
        helper: String,
        registry: String,
        message: String,
    },
    #[error("{method} {url}: {message}")]
    Http {
        method: String,
        url: String,
        message: String,
    },
    #[error("{method} {url}: the registry answered {status}: {body}{hint}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
        hint: String,
    },
    #[error("the registry stored the manifest as {got}, not {want}")]
    DigestMismatch { want: String, got: String },
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A ustar archive holding one regular file `name` (mode 0644, owner 0, time 0: reproducible).
fn tar_one(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
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
        let tar = tar_one(WASM_FILE_IN_LAYER, wasm);
        let layer = gzip_stored(&tar);
        let config = json!({
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
        })
        .to_string()
        .into_bytes();
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

/// The keys a docker config may file `registry` under.
fn config_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == "docker.io" || registry == "registry-1.docker.io" {
        keys.push("https://index.docker.io/v1/".to_owned());
    }
    keys
}

/// Credentials for `registry` from the docker config at `path` (absent file: none), as docker
/// itself looks them up: `credHelpers[registry]`, else `auths[registry]`, else `credsStore`.
pub fn credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, PublishError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishError::DockerConfig {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
    };
    let bad = |message: String| PublishError::DockerConfig {
        path: path.to_owned(),
        message,
    };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let keys = config_keys(registry);
    if let Some(helper) = keys
        .iter()
        .find_map(|k| config["credHelpers"][k.as_str()].as_str())
    {
        return helper_credentials(helper, registry);
    }
    for k in &keys {
        let entry = &config["auths"][k.as_str()];
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|e| bad(format!("auths[{k}].auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths[{k}].auth is not UTF-8")))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auths[{k}].auth is not user:password")))?;
            return Ok(Some(Credentials {
                username: user.to_owned(),
                password: pass.to_owned(),
            }));
        }
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return Ok(Some(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }));
        }
    }
    if let Some(store) = config["credsStore"].as_str() {
        return helper_credentials(store, registry);
    }
    Ok(None)
}

/// `docker-credential-<helper> get`, the docker credential helper protocol.
fn helper_credentials(helper: &str, registry: &str) -> Result<Option<Credentials>, PublishError> {
    let fail = |message: String| PublishError::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // The protocol's answer for "nothing stored for this server".
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{}: {msg}", out.status)));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(u), Some(s)) => Ok(Some(Credentials {
            username: u.to_owned(),
            password: s.to_owned(),
        })),
        _ => Err(fail("no Username/Secret in its answer".into())),
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A response, read to the end.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The OCI distribution API of one registry, for pushing to one repository.
struct Registry {
    client: HttpsClient,
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    authorization: Option<HeaderValue>,
}

impl Registry {
    fn new(
        registry: &str,
        repository: &str,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self, PublishError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| PublishError::Http {
                method: "TLS".into(),
                url: registry.to_owned(),
                message: format!("cannot load the system's root certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Registry {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("{}://{registry}", if plain_http { "http" } else { "https" }),
            repository: repository.to_owned(),
            credentials,
            authorization: None,
        })
    }

    async fn send(
        &self,
        method: &Method,
        url: &str,
        content_type: Option<&str>,
        body: &Bytes,
        authorization: Option<&HeaderValue>,
    ) -> Result<Answer, PublishError> {
        let http = |message: String| PublishError::Http {
            method: method.to_string(),
            url: url.to_owned(),
            message,
        };
        let mut req = Request::builder().method(method.clone()).uri(url);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| http(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| http(format!("{e} ({})", source_chain(&e))))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request; on `401` authenticates as the challenge asks (basic, or a bearer token
    /// from the realm) and sends it once more.
    async fn call(
        &mut self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, PublishError> {
        let first = self
            .send(
                &method,
                url,
                content_type,
                &body,
                self.authorization.as_ref(),
            )
            .await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.authorization = Some(self.authenticate(&challenge, url).await?);
        self.send(
            &method,
            url,
            content_type,
            &body,
            self.authorization.as_ref(),
        )
        .await
    }

    fn basic(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref()?;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        HeaderValue::from_str(&format!("Basic {token}")).ok()
    }

    async fn authenticate(&self, challenge: &str, url: &str) -> Result<HeaderValue, PublishError> {
        let denied = |message: String| PublishError::Status {
            method: "authenticate".into(),
            url: url.to_owned(),
            status: 401,
            body: message,
            hint: String::new(),
        };
        let no_credentials = || {
            denied(format!(
                "the registry wants credentials and none were found for it in {} \
                 (fix: `docker login {}`, or the registry's credential helper)",
                docker_config_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the docker config".into()),
                self.base.split("://").nth(1).unwrap_or_default()
            ))
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return self.basic().ok_or_else(no_credentials);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(format!("unsupported challenge `{challenge}`")));
        }
        let params = challenge_params(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| denied(format!("bearer challenge without realm: `{challenge}`")))?;
        let mut token_url = format!("{realm}?");
        if let Some(service) = params.get("service") {
            token_url.push_str(&format!("service={}&", query_escape(service)));
        }
        let scope = format!("repository:{}:pull,push", self.repository);
        token_url.push_str(&format!("scope={}", query_escape(&scope)));
        let answer = self
            .send(
                &Method::GET,
                &token_url,
                None,
                &Bytes::new(),
                self.basic().as_ref(),
            )
            .await?;
        if !answer.status.is_success() {
            if self.credentials.is_none() {
                return Err(no_credentials());
            }
            return Err(status_error("GET", &token_url, &answer));
        }
        let v: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| denied(format!("token answer is not JSON: {e}")))?;
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| denied("token answer has no token".into()))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| denied(format!("token is not a header value: {e}")))
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// Uploads `blob` unless the registry has it.
    async fn put_blob(&mut self, blob: &[u8]) -> Result<(), PublishError> {
        let d = digest(blob);
        let head = self.url(&format!("blobs/{d}"));
        let answer = self.call(Method::HEAD, &head, None, Bytes::new()).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let start = self.url("blobs/uploads/");
        let answer = self.call(Method::POST, &start, None, Bytes::new()).await?;
        if answer.status != StatusCode::ACCEPTED {
            return Err(status_error("POST", &start, &answer));
        }
        let location = answer
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PublishError::Http {
                method: "POST".into(),
                url: start.clone(),
                message: "no Location in the upload answer".into(),
            })?;
        let mut put = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", query_escape(&d)));
        let answer = self
            .call(
                Method::PUT,
                &put,
                Some("application/octet-stream"),
                Bytes::copy_from_slice(blob),
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(status_error("PUT", &put, &answer));
        }
        Ok(())
    }

    async fn put_manifest(&mut self, tag: &str, manifest: &[u8]) -> Result<(), PublishError> {
        let url = self.url(&format!("manifests/{tag}"));
        let answer = self
            .call(
                Method::PUT,
                &url,
                Some(MANIFEST_MEDIA_TYPE),
                Bytes::copy_from_slice(manifest),
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(status_error("PUT", &url, &answer));
        }
        let want = digest(manifest);
        if let Some(got) = answer
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if got != want {
                return Err(PublishError::DigestMismatch {
                    want,
                    got: got.to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn status_error(method: &str, url: &str, a: &Answer) -> PublishError {
    let hint = match a.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            "\n  fix: check the credentials for this registry in the docker config (`docker login`) and that they may push to this repository".to_owned()
        }
        _ => String::new(),
    };
    PublishError::Status {
        method: method.to_owned(),
        url: url.to_owned(),
        status: a.status.as_u16(),
        body: String::from_utf8_lossy(&a.body).chars().take(400).collect(),
        hint,
    }
}

/// `key="value", key2=value2` of a `WWW-Authenticate` challenge.
fn challenge_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, a)) => (v.to_owned(), a),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, a)) => (v.trim().to_owned(), a),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.insert(key, value);
        rest = after.trim_start_matches(',').trim();
    }
    out
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One pushed module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// `meshguard-authz` or `meshguard-metrics`.
    pub name: String,
    /// The `install` flag taking its URL.
    pub flag: String,
    /// `oci://REGISTRY/PATH/NAME:TAG`.
    pub url: String,
    /// The manifest digest (hex): the `sha256` to pass to `install`.
    pub sha256: String,
    /// Size of the `.wasm`.
    pub wasm_bytes: usize,
}

/// What `publish` does.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub repository: String,
    pub tag: String,
    pub filters_dir: PathBuf,
    pub plain_http: bool,
    /// The docker config to take credentials from (default: [`docker_config_path`]).
    pub docker_config: Option<PathBuf>,
}

/// Packages and pushes both filters.
pub async fn publish(opts: &PublishOptions) -> Result<Vec<Published>, PublishError> {
    let repo = Repository::parse(&opts.repository)?;
    check_tag(&opts.tag)?;
    let mut modules = Vec::new();
    for (name, file, flag) in FILTERS {
        let path = opts.filters_dir.join(file);
        let wasm = std::fs::read(&path).map_err(|source| PublishError::ReadModule {
            path: path.clone(),
            source,
        })?;
        if !wasm.starts_with(b"\0asm") {
            return Err(PublishError::NotWasm { path });
        }
        modules.push((name, flag, wasm));
    }
    let config_path = opts.docker_config.clone().or_else(docker_config_path);
    let creds = match &config_path {
        Some(p) => credentials(p, &repo.registry)?,
        None => None,
    };
    let mut out = Vec::new();
    for (name, flag, wasm) in modules {
        let image = Image::of_wasm(&wasm);
        let repository = format!("{}/{name}", repo.path);
        let mut registry =
            Registry::new(&repo.registry, &repository, opts.plain_http, creds.clone())?;
        registry.put_blob(&image.layer).await?;
        registry.put_blob(&image.config).await?;
        registry.put_manifest(&opts.tag, &image.manifest).await?;
        out.push(Published {
            name: name.to_owned(),
            flag: flag.to_owned(),
            url: format!("oci://{}/{repository}:{}", repo.registry, opts.tag),
            sha256: image.sha256(),
            wasm_bytes: wasm.len(),
        });
    }
    Ok(out)
}

/// The `meshctl install` flags for published modules.
pub fn install_flags(published: &[Published]) -> String {
    published
        .iter()
        .map(|p| format!("{} {} {}-sha256 {}", p.flag, p.url, p.flag, p.sha256))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tar_holds_the_file_at_block_boundaries() {
        let t = tar_one("plugin.wasm", b"\0asmabc");
        assert_eq!(t.len(), 512 + 512 + 1024);
        assert_eq!(&t[..11], b"plugin.wasm");
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
    fn repositories_and_challenges_parse() {
        let r = Repository::parse("oci://127.0.0.1:5000/meshguard/").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "meshguard")
        );
        assert!(Repository::parse("meshguard").is_err());
        assert!(Repository::parse("ghcr.io/Acme").is_err());
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
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
