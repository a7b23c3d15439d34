//! Each command, from parsed flags to output: data on `out` (stdout), progress on `progress`
//! (stderr).

use std::io::Write;

use kube::api::DynamicObject;
use meshguard_manifests::{MeshFile, MeshSpec, RenderOptions};

use crate::apply::{self, InstallOptions};
use crate::cli::{Cli, Command, DryRun, GlobalArgs, OutputFormat, RenderArgs};
use crate::client::Connection;
use crate::error::Error;
use crate::preflight;
use crate::progress::Progress;
use crate::status;
use crate::uninstall::{self, UninstallOptions};

/// How a command that ran to the end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Everything as it should be: exit status 0.
    Success,
    /// The command worked but reports a problem (status: objects missing or drifted;
    /// preflight: errors found): exit status 1.
    Problems,
    /// Preflight found only problems of the mesh file's fields (a GPU service and no GPU pool):
    /// exit status 2, as for any bad input.
    InputProblems,
}

/// The mesh these flags describe: the `--file` document (or the built-in one) with the flags
/// that override it applied, and the namespace it goes to (`--namespace`, else the file's,
/// else the default).
pub fn mesh_spec(global: &GlobalArgs, args: &RenderArgs) -> Result<(MeshSpec, String), Error> {
    let file = args.file.as_deref().map(MeshFile::read).transpose()?;
    let mut spec = file
        .as_ref()
        .map_or_else(MeshSpec::reference, |f| f.spec.clone());
    spec.apply(&args.overrides())?;
    let namespace = global.namespace_or(spec.namespace.as_deref());
    // A flag's value is checked where it applies; the document stays valid with it, or the
    // error points at the field it changed.
    if let Err(e) = spec.validate() {
        return Err(match &file {
            Some(f) => Error::MeshFile(f.located(&e)),
            None => meshguard_manifests::RenderError::from(e).into(),
        });
    }
    Ok((spec, namespace))
}

/// The render options and objects for these flags.
pub fn render_objects(
    global: &GlobalArgs,
    args: &RenderArgs,
) -> Result<(RenderOptions, Vec<DynamicObject>), Error> {
    let (spec, namespace) = mesh_spec(global, args)?;
    let opts = args.to_options(&namespace);
    let objects = meshguard_manifests::render(&spec, &opts)?;
    Ok((opts, objects))
}

/// The render options and objects for these flags on the cluster `conn` talks to: without
/// `--pod-security`, the namespace enforces the strictest Pod Security level the pods Istio
/// injects there pass (`restricted` with Istio CNI, `privileged` without it; see
/// `preflight::detect_istio_cni`), so what is installed is what will be admitted.
pub async fn render_for_cluster(
    conn: &Connection,
    global: &GlobalArgs,
    args: &RenderArgs,
) -> Result<(RenderOptions, Vec<DynamicObject>), Error> {
    let (spec, namespace) = mesh_spec(global, args)?;
    let mut opts = args.to_options(&namespace);
    if args.pod_security.is_none() {
        opts.pod_security = preflight::detect_istio_cni(&conn.client)
            .await
            .pod_security();
    }
    let objects = meshguard_manifests::render(&spec, &opts)?;
    Ok((opts, objects))
}

/// Runs one parsed command line.
pub async fn run(
    cli: Cli,
    out: &mut dyn Write,
    progress: &mut dyn Progress,
) -> Result<Finished, Error> {
    let global = cli.global;
    match cli.command {
        Command::Render(args) => {
            let (_, objects) = render_objects(&global, &args.render)?;
            out.write_all(meshguard_manifests::to_yaml(&objects)?.as_bytes())?;
            out.flush()?;
            Ok(Finished::Success)
        }
        Command::Install(args) => {
            let (opts, _) = render_objects(&global, &args.render)?;
            // Refuse placeholder modules before touching (or even looking for) a cluster.
            let local = preflight::check_local(&opts);
            if !local.is_ok() {
                return Err(local.refusal());
            }
            let conn = connect(&global).await?;
            let (opts, objects) = render_for_cluster(&conn, &global, &args.render).await?;
            let install = InstallOptions {
                dry_run: args.dry_run == DryRun::Server,
                skip_preflight: args.skip_preflight,
                wait: args.wait.then_some(args.timeout),
                mesh_file: args
                    .render
                    .file
                    .as_deref()
                    .map(MeshFile::read)
                    .transpose()?,
            };
            apply::install(&conn, &objects, &opts, &install, progress).await?;
            Ok(Finished::Success)
        }
        Command::Uninstall(args) => {
            let conn = connect(&global).await?;
            let opts = UninstallOptions {
                dry_run: args.dry_run == DryRun::Server,
                delete_namespace: args.delete_namespace,
                wait: args.wait.then_some(args.timeout),
            };
            uninstall::uninstall(&conn, &global.namespace_or(None), &opts, progress).await?;
            Ok(Finished::Success)
        }
        Command::Status(args) => {
            render_objects(&global, &args.render)?;
            let conn = connect(&global).await?;
            let (opts, objects) = render_for_cluster(&conn, &global, &args.render).await?;
            let report = loop {
                let report = status::status(&conn, &objects, &opts.namespace).await?;
                match args.output {
                    OutputFormat::Table if args.watch => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        writeln!(out, "--- {} (every {:?}) ---", clock(now), args.interval)?;
                        writeln!(out, "{}", report.table())?;
                    }
                    OutputFormat::Table => writeln!(out, "{}", report.table())?,
                    // One document per line while watching, so each can be read as it comes.
                    OutputFormat::Json if args.watch => {
                        serde_json::to_writer(&mut *out, &report)
                            .map_err(|e| Error::Output(e.into()))?;
                        writeln!(out)?;
                    }
                    OutputFormat::Json => {
                        serde_json::to_writer_pretty(&mut *out, &report)
                            .map_err(|e| Error::Output(e.into()))?;
                        writeln!(out)?;
                    }
                }
                out.flush()?;
                if !args.watch {
                    break report;
                }
                tokio::time::sleep(args.interval).await;
            };
            Ok(if report.in_sync() {
                Finished::Success
            } else {
                Finished::Problems
            })
        }
        Command::Publish(args) => {
            let published = crate::publish::publish(&crate::publish::PublishOptions {
                repository: args.repository.clone(),
                tag: args.tag.clone(),
                filters_dir: args.filters_dir.clone(),
                services_dir: args.services.then(|| args.services_dir.clone()),
                plain_http: args.plain_http,
                docker_config: None,
            })
            .await?;
            for p in &published {
                let what = if p.flag.is_some() { ".wasm" } else { "binary" };
                writeln!(
                    out,
                    "{:<18} {} ({} bytes of {what})\n{:<18} sha256 {}",
                    p.name, p.url, p.bytes, "", p.sha256
                )?;
            }
            writeln!(
                out,
                "\nmeshctl install {}",
                crate::publish::install_flags(&published, &args.repository, &args.tag)
            )?;
            out.flush()?;
            Ok(Finished::Success)
        }
        Command::Preflight(args) => {
            render_objects(&global, &args.render)?;
            let conn = connect(&global).await?;
            let (opts, objects) = render_for_cluster(&conn, &global, &args.render).await?;
            let mut report = preflight::run(&conn, &objects, &opts).await?;
            if let Some(file) = args
                .render
                .file
                .as_deref()
                .map(MeshFile::read)
                .transpose()?
            {
                report.locate(&file);
            }
            writeln!(out, "{report}")?;
            out.flush()?;
            Ok(if report.is_ok() {
                Finished::Success
            } else if report.only_mesh_file_errors() {
                Finished::InputProblems
            } else {
                Finished::Problems
            })
        }
    }
}

/// `HH:MM:SS` (UTC) of a Unix time.
fn clock(unix: u64) -> String {
    let day = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

async fn connect(global: &GlobalArgs) -> Result<Connection, Error> {
    Connection::new(&global.target()).await
}
