//! Shared wasmtime engines and the per-process compiled-module cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use wasmtime::{Config, Engine, ExternType, Linker, Module};

use crate::error::{HostCallTrap, HostError};
use crate::state::HostState;

/// Engine settings that change generated code (each gets its own engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EngineKey {
    pub fuel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ModuleKey {
    File {
        engine: EngineKey,
        path: PathBuf,
        len: u64,
        modified: Option<SystemTime>,
    },
    Bytes {
        engine: EngineKey,
        len: usize,
        hash: u64,
    },
}

fn engines() -> &'static Mutex<HashMap<EngineKey, Engine>> {
    static ENGINES: OnceLock<Mutex<HashMap<EngineKey, Engine>>> = OnceLock::new();
    ENGINES.get_or_init(|| Mutex::new(HashMap::new()))
}

type ModuleSlot = Arc<OnceLock<Result<Module, HostError>>>;

fn modules() -> &'static Mutex<HashMap<ModuleKey, ModuleSlot>> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, ModuleSlot>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Compiles a module at most once per key; callers wanting the same module
/// wait for the first compilation, others are not blocked.
fn cached_or_compile(
    key: ModuleKey,
    compile: impl FnOnce() -> Result<Module, HostError>,
) -> Result<Module, HostError> {
    let slot = {
        let mut map = modules().lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    };
    slot.get_or_init(compile).clone()
}

/// The process-wide engine for `key`.
pub(crate) fn engine(key: EngineKey) -> Result<Engine, HostError> {
    let mut map = engines().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(engine) = map.get(&key) {
        return Ok(engine.clone());
    }
    let mut config = Config::new();
    config.consume_fuel(key.fuel);
    let engine = Engine::new(&config).map_err(|e| HostError::Compile {
        name: "<engine>".into(),
        message: format!("{e:#}"),
    })?;
    map.insert(key, engine.clone());
    Ok(engine)
}

/// Compiles (or fetches from the cache) the module in `path`.
pub(crate) fn module_from_file(key: EngineKey, path: &Path) -> Result<Module, HostError> {
    let io_err = |e: std::io::Error| HostError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let canonical = path.canonicalize().map_err(io_err)?;
    let meta = std::fs::metadata(&canonical).map_err(io_err)?;
    let cache_key = ModuleKey::File {
        engine: key,
        path: canonical.clone(),
        len: meta.len(),
        modified: meta.modified().ok(),
    };
    cached_or_compile(cache_key, || {
        let bytes = std::fs::read(&canonical).map_err(io_err)?;
        compile(key, &path.display().to_string(), &bytes)
    })
}

/// Compiles (or fetches from the cache) an in-memory module.
pub(crate) fn module_from_bytes(
    key: EngineKey,
    name: &str,
    bytes: &[u8],
) -> Result<Module, HostError> {
    let cache_key = ModuleKey::Bytes {
        engine: key,
        len: bytes.len(),
        hash: fnv1a(bytes),
    };
    cached_or_compile(cache_key, || compile(key, name, bytes))
}

fn compile(key: EngineKey, name: &str, bytes: &[u8]) -> Result<Module, HostError> {
    let engine = engine(key)?;
    Module::from_binary(&engine, bytes).map_err(|e| HostError::Compile {
        name: name.to_string(),
        message: format!("{e:#}"),
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The ABI marker Envoy requires (`BytecodeUtil::getAbiVersion`).
pub(crate) const ABI_EXPORT: &str = "proxy_abi_version_0_2_1";

/// Checks the ABI marker export.
pub(crate) fn check_abi(module: &Module) -> Result<(), HostError> {
    let found: Vec<String> = module
        .exports()
        .map(|e| e.name().to_string())
        .filter(|n| n.starts_with("proxy_abi_version_"))
        .collect();
    if found.iter().any(|n| n == ABI_EXPORT) {
        Ok(())
    } else {
        Err(HostError::AbiVersion { found })
    }
}

const KNOWN_MODULES: &[&str] = &["env", "wasi_snapshot_preview1", "wasi_unstable"];

/// Links a stub for every function import the host does not implement: it
/// records the call and traps with the import's name. Imports from unknown
/// modules, and non-function imports, are rejected before instantiation.
pub(crate) fn link_stubs(
    linker: &mut Linker<HostState>,
    defined: &crate::hostcalls::Defined,
    module: &Module,
) -> Result<(), HostError> {
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        if !KNOWN_MODULES.contains(&m) {
            return Err(HostError::UnknownImport {
                module: m.to_string(),
                name: name.to_string(),
            });
        }
        let ty = match import.ty() {
            ExternType::Func(ty) => ty,
            other => {
                let kind = match other {
                    ExternType::Global(_) => "global",
                    ExternType::Table(_) => "table",
                    ExternType::Memory(_) => "memory",
                    _ => "non-function import",
                };
                return Err(HostError::UnsupportedImport {
                    module: m.to_string(),
                    name: name.to_string(),
                    kind: kind.to_string(),
                });
            }
        };
        if defined.contains(&(m.to_string(), name.to_string())) {
            continue;
        }
        let full = if m == "env" {
            name.to_string()
        } else {
            format!("{m}.{name}")
        };
        linker
            .func_new(m, name, ty, move |mut caller, _params, _results| {
                caller.data_mut().unimplemented_calls.push(full.clone());
                Err(wasmtime::Error::new(HostCallTrap::Unimplemented(
                    full.clone(),
                )))
            })
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
    }
    Ok(())
}
