//! `meshctl publish` against a real registry, and the modules pulled back with Istio's own Wasm
//! fetch code.
//!
//! The registry is the CNCF distribution registry (`meshguard-registry`, built from
//! github.com/distribution/distribution/v3 by tests/istio/build.sh) on loopback, with htpasswd
//! basic authentication; meshctl takes the credentials from a docker config file. The fetch is
//! Istio's agent code (`pkg/wasm` `LocalFileCache.Get`, `meshguard-istio fetch`) with the
//! printed `sha256` as the WasmPlugin's and the docker config as its pull secret: it must return
//! the very bytes of each `.wasm`.
//!
//! The reference services' images (`publish --services`) are pulled back with
//! go-containerregistry (`meshguard-istio image-inspect`), which validates every blob against its
//! digest and the layers against the config, and unpacks the filesystem as a container runtime
//! would: each holds its static binary, byte for byte, as its executable entrypoint, and that
//! binary, run from the unpacked image, serves its health endpoint. Then a real container
//! runtime, Debian's containerd and runc (a private one, `meshguard_testcluster::containerd`),
//! pulls each image from the registry and runs it: as the image's user, answering its health
//! endpoint, stopping on SIGTERM, and leaving no cgroup behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use clap::Parser as _;
use meshctl::publish::{
    install_flags, publish, PublishError, PublishOptions, FILTERS, SERVICES, SERVICE_USER,
};
use meshguard_istio_tests::run_raw;
use meshguard_testcluster::containerd::Containerd;
use meshguard_testcluster::registry::Registry;

const USER: &str = "meshguard";
const PASSWORD: &str = "publish-test-secret";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("meshguard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn docker_config(dir: &Path, registry: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let path = dir.join(format!("config-{password}.json"));
    std::fs::write(
        &path,
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}

/// Istio's fetch of `url` with `sha256`: the module's bytes, or what Istio said.
fn istio_fetch(
    url: &str,
    sha256: &str,
    pull_secret: Option<&Path>,
    out: &Path,
) -> Result<Vec<u8>, String> {
    let mut args = vec!["fetch".to_owned(), "--insecure".to_owned()];
    if let Some(s) = pull_secret {
        args.push("--pull-secret".into());
        args.push(s.display().to_string());
    }
    args.extend([url.to_owned(), sha256.to_owned(), out.display().to_string()]);
    let o = run_raw(&args).unwrap_or_else(|e| panic!("{e}"));
    if o.status.success() {
        Ok(std::fs::read(out).unwrap())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// A registry (with basic authentication; `realm` for its challenge) in a folder of its own,
/// a docker config with its credentials, and the options that publish there.
fn registry_and_options(
    tag: &str,
    realm: Option<&str>,
    services_dir: Option<PathBuf>,
) -> (TempDir, Registry, PathBuf, PublishOptions) {
    let filters = meshguard_filter_tests::filters_dir().unwrap_or_else(|e| panic!("{e}"));
    let tmp = TempDir::new(tag);
    let root = tmp.0.join("registry");
    std::fs::create_dir_all(&root).unwrap();
    let registry = Registry::start(&root, Some(&format!("{USER}:{PASSWORD}")), realm)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = docker_config(&tmp.0, registry.addr(), PASSWORD);
    let opts = PublishOptions {
        repository: format!("{}/meshguard", registry.addr()),
        tag: "0.1.0".into(),
        filters_dir: filters.to_path_buf(),
        services_dir,
        plain_http: true,
        docker_config: Some(config.clone()),
    };
    (tmp, registry, config, opts)
}

/// `meshctl install` parsed from the flags publish printed.
fn install_with_printed_flags(
    published: &[meshctl::publish::Published],
    opts: &PublishOptions,
) -> meshctl::cli::InstallArgs {
    let line = format!(
        "meshctl install {}",
        install_flags(published, &opts.repository, &opts.tag)
    );
    let cli = meshctl::cli::Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{e}"));
    let meshctl::cli::Command::Install(args) = cli.command else {
        panic!("not install")
    };
    args
}

#[tokio::test]
async fn published_modules_are_what_istios_agent_fetches_with_the_printed_sha256() {
    let filters = meshguard_filter_tests::filters_dir().unwrap_or_else(|e| panic!("{e}"));
    let (tmp, registry, config, opts) = registry_and_options("publish", None, None);

    // Without credentials the registry refuses, and meshctl says where they come from.
    let none = PublishOptions {
        docker_config: Some(tmp.0.join("absent.json")),
        ..opts.clone()
    };
    let err = publish(&none).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Registry { hint: Some(_), .. }),
        "{err}"
    );
    assert!(err.to_string().contains("docker login"), "{err}");

    let published = publish(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(published.len(), FILTERS.len());
    for (p, (name, file, _)) in published.iter().zip(FILTERS) {
        assert_eq!(p.name, name);
        assert_eq!(
            p.url,
            format!("oci://{}/meshguard/{name}:0.1.0", registry.addr())
        );
        let wasm = std::fs::read(filters.join(file)).unwrap();
        let out = tmp.0.join(format!("{name}.fetched.wasm"));
        let fetched = istio_fetch(&p.url, &p.sha256, Some(&config), &out)
            .unwrap_or_else(|e| panic!("Istio could not fetch {}: {e}", p.url));
        assert!(fetched == wasm, "{name}: Istio returned other bytes");

        // The sha256 is the one Istio compares: another one is refused.
        let wrong = "0".repeat(64);
        let err = istio_fetch(&p.url, &wrong, Some(&config), &out).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        // And the registry is really private: without the pull secret Istio gets nothing.
        let err = istio_fetch(&p.url, &p.sha256, None, &out).unwrap_err();
        assert!(err.contains("UNAUTHORIZED") || err.contains("401"), "{err}");
    }

    // Publishing again gives the same digests (the images are reproducible).
    let again = publish(&opts).await.unwrap();
    assert_eq!(again, published);

    // The printed flags are what `meshctl install` takes.
    let args = install_with_printed_flags(&published, &opts);
    let o = args.render.to_options("meshguard");
    assert_eq!(o.authz_module_url, published[0].url);
    assert_eq!(
        o.authz_module_sha256.as_deref(),
        Some(published[0].sha256.as_str())
    );
    assert_eq!(
        o.metrics_module_sha256.as_deref(),
        Some(published[1].sha256.as_str())
    );
}

#[tokio::test]
async fn istio_refuses_a_registry_whose_basic_realm_is_not_a_public_url() {
    // What the docs warn about: Istio's agent checks every 401's realm (SSRF protection in
    // pkg/wasm/imagefetcher.go) and refuses a registry that names none, with or without
    // credentials. meshctl itself can push there.
    let (tmp, _registry, config, opts) =
        registry_and_options("publish-realm", Some("meshguard-test"), None);
    let published = publish(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    let err = istio_fetch(
        &published[0].url,
        &published[0].sha256,
        Some(&config),
        &tmp.0.join("out.wasm"),
    )
    .unwrap_err();
    assert!(err.contains("rejected unsafe bearer realm"), "{err}");
}

/// The folder of the reference services' static binaries (`MESHGUARD_SERVICES_DIR`, set by
/// scripts/test.sh).
fn services_dir() -> PathBuf {
    std::env::var_os("MESHGUARD_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "MESHGUARD_SERVICES_DIR is not set: build the services ({}) and export it (scripts/test.sh does)",
            meshctl::publish::BUILD_SERVICES
        )
    })
}

/// What go-containerregistry reports of an image (`meshguard-istio image-inspect`).
#[derive(Debug, serde::Deserialize)]
struct Inspected {
    digest: String,
    os: String,
    architecture: String,
    entrypoint: Vec<String>,
    user: String,
    exposed_ports: Vec<String>,
    files: Vec<InspectedFile>,
}

#[derive(Debug, serde::Deserialize)]
struct InspectedFile {
    path: String,
    mode: u32,
    size: u64,
}

/// `GET /healthz` on 127.0.0.1:`port`: the whole answer, or `None` if nothing listens.
fn healthz(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// [`healthz`] once something answers on `port`, within 30 s.
fn healthz_when_up(port: u16) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(answer) = healthz(port) {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answers on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `binary` with `PORT=0` until it says where it listens, then asks its health endpoint.
fn health_of(binary: &Path) -> String {
    let mut child = Command::new(binary)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            panic!("{} exited before listening", binary.display());
        };
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "listening" {
            break v["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    let answer = healthz(port).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    answer
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The effective user and group of process `pid` (`/proc/<pid>/status`).
fn uid_gid(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().nth(1))
            .unwrap()
            .to_owned()
    };
    format!("{}:{}", field("Uid:"), field("Gid:"))
}

#[tokio::test]
async fn published_services_are_valid_images_of_their_binaries() {
    let services = services_dir();
    let (tmp, registry, _config, opts) =
        registry_and_options("publish-services", None, Some(services.clone()));
    let published = publish(&opts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(published.len(), FILTERS.len() + SERVICES.len());
    for (service, file, port) in SERVICES {
        let p = published.iter().find(|p| p.name == service).unwrap();
        assert_eq!(p.flag, None);
        assert_eq!(
            p.image(),
            format!("{}/meshguard/{service}:0.1.0", registry.addr())
        );
        let unpacked = tmp.0.join(format!("{service}-rootfs"));
        let out = run_raw([
            "image-inspect".to_owned(),
            "--insecure".to_owned(),
            "--basic".to_owned(),
            format!("{USER}:{PASSWORD}"),
            p.image().to_owned(),
            unpacked.display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "go-containerregistry refused {}: {}",
            p.image(),
            String::from_utf8_lossy(&out.stderr)
        );
        let image: Inspected = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(image.digest, format!("sha256:{}", p.sha256));
        assert_eq!(
            (image.os.as_str(), image.architecture.as_str()),
            ("linux", "amd64")
        );
        assert_eq!(image.entrypoint, [format!("/{service}")]);
        assert_eq!(image.user, SERVICE_USER);
        assert_eq!(image.exposed_ports, [format!("{port}/tcp")]);
        let binary = std::fs::read(services.join(file)).unwrap();
        assert_eq!(image.files.len(), 1, "{:?}", image.files);
        let f = &image.files[0];
        assert_eq!(
            (f.path.as_str(), f.mode, f.size),
            (service, 0o755, binary.len() as u64)
        );
        let path = unpacked.join(service);
        assert!(
            std::fs::read(&path).unwrap() == binary,
            "{service}: other bytes in the image"
        );
        let answer = health_of(&path);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{service} from its image: {answer}"
        );
    }

    // Each image runs in a real container runtime (Debian's containerd and runc): pulled from
    // the registry with the credentials, started with its own entrypoint as the image's user,
    // answering its health endpoint, and stopped by SIGTERM, leaving no cgroup behind.
    let namespace = format!("meshguard-publish-{}", std::process::id());
    let runtime =
        Containerd::start(&tmp.0.join("containerd"), &namespace).unwrap_or_else(|e| panic!("{e}"));
    for (service, _, _) in SERVICES {
        let image = published
            .iter()
            .find(|p| p.name == service)
            .unwrap()
            .image();
        runtime
            .pull(image, Some(&format!("{USER}:{PASSWORD}")), true)
            .unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let pid = runtime
            .run(
                image,
                service,
                &[("PORT", &port.to_string()), ("SHUTDOWN_DRAIN_MS", "0")],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(uid_gid(pid), SERVICE_USER, "{service} in containerd");
        let answer = healthz_when_up(port);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{service} in containerd: {answer}"
        );
        assert!(
            runtime
                .stop(service, std::time::Duration::from_secs(15))
                .unwrap(),
            "{service} did not stop on SIGTERM"
        );
    }
    let cgroups = runtime.cgroup_dirs();
    drop(runtime);
    for dir in cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    // The printed flags make install run these images.
    let args = install_with_printed_flags(&published, &opts);
    let mut spec = meshguard_manifests::MeshSpec::reference();
    spec.apply(&args.render.overrides()).unwrap();
    for (service, _, _) in SERVICES {
        let want = published
            .iter()
            .find(|p| p.name == service)
            .unwrap()
            .image();
        assert_eq!(spec.service(service).unwrap().image, want);
    }
}
