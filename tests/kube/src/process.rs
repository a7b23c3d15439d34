//! Supervised child processes (etcd, kube-apiserver and the local cluster's
//! other components).
//!
//! Each child gets a dedicated monitor thread that spawns it and waits for it.
//! That thread is the child's parent thread for `PR_SET_PDEATHSIG`, which
//! fires when the *thread* that forked exits: a thread that lives exactly as
//! long as the child means the child is killed when the test process dies, and
//! never earlier (for instance when a tokio worker or test thread that called
//! `TestCluster::start` ends while the cluster is shared).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::error::{Error, Result};

/// How long to wait after SIGKILL before giving up on a child.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The shared exit state of a child: `None` while it runs, then a description
/// of how it exited. The child is only reaped while this lock is held, so a
/// signal sent under the lock while it is `None` always reaches our child and
/// never a process that reused its pid.
type ExitState = Arc<(Mutex<Option<String>>, Condvar)>;

/// A running child process with its log file.
#[derive(Debug)]
pub(crate) struct Supervised {
    name: &'static str,
    pid: u32,
    log: PathBuf,
    state: ExitState,
    monitor: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Starts `program args` with stdout and stderr appended to `log`, stdin
    /// closed, in its own process group, killed if this process dies.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Supervised::spawn`] with extra environment variables.
    pub(crate) fn spawn_with_env(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Self> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("cannot open log {}", log.display()), e))?;
        let stderr = log_file
            .try_clone()
            .map_err(|e| Error::io(format!("cannot open log {}", log.display()), e))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            // Keep terminal signals (Ctrl-C) away from the children: the owner
            // stops them in order (apiserver first, then etcd).
            .process_group(0);
        die_with_parent_thread(&mut command);

        let state: ExitState = Arc::new((Mutex::new(None), Condvar::new()));
        let thread_state = Arc::clone(&state);
        let (started_tx, started_rx) = mpsc::channel();
        let monitor = std::thread::Builder::new()
            .name(format!("testcluster-{name}"))
            .spawn(move || monitor(command, &started_tx, &thread_state))
            .map_err(|e| Error::io(format!("cannot start the monitor thread of {name}"), e))?;
        let spawned = started_rx.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the monitor thread ended before spawning",
            ))
        });
        match spawned {
            Ok(pid) => Ok(Self {
                name,
                pid,
                log,
                state,
                monitor: Some(monitor),
            }),
            Err(source) => {
                let _ = monitor.join();
                Err(Error::Spawn {
                    name,
                    binary: program.to_path_buf(),
                    source,
                })
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// How the child exited, or `None` while it runs.
    pub(crate) fn exit_status(&self) -> Option<String> {
        let (lock, _) = &*self.state;
        lock.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The last `lines` lines of the log file.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// An [`Error::ExitedEarly`] for this child if it is no longer running.
    pub(crate) fn check_running(&self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::ExitedEarly {
                name: self.name,
                status,
                log: self.log.clone(),
                tail: self.log_tail(40),
            }),
        }
    }

    /// Stops the child: SIGTERM, then SIGKILL if it is still running after
    /// `grace`. Returns once it has been reaped. Idempotent.
    pub(crate) fn stop(&mut self, grace: Duration) -> Result<()> {
        let result = self
            .signal_and_wait(Signal::TERM, grace)
            .and_then(|exited| {
                if exited {
                    Ok(true)
                } else {
                    self.signal_and_wait(Signal::KILL, KILL_WAIT)
                }
            })
            .and_then(|exited| {
                if exited {
                    Ok(())
                } else {
                    Err(Error::Stop {
                        name: self.name,
                        pid: self.pid,
                        message: format!("still running {KILL_WAIT:?} after SIGKILL"),
                    })
                }
            });
        if result.is_ok() {
            if let Some(monitor) = self.monitor.take() {
                let _ = monitor.join();
            }
        }
        result
    }

    /// Sends `signal` unless the child has exited, then waits up to `wait` for
    /// it to exit. Returns whether it has.
    fn signal_and_wait(&self, signal: Signal, wait: Duration) -> Result<bool> {
        let (lock, exited) = &*self.state;
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() {
            return Ok(true);
        }
        let pid =
            Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX)).ok_or(Error::Stop {
                name: self.name,
                pid: self.pid,
                message: "invalid pid".to_owned(),
            })?;
        // The lock is held and the child is not reaped: `pid` is still ours.
        rustix::process::kill_process(pid, signal).map_err(|e| Error::Stop {
            name: self.name,
            pid: self.pid,
            message: format!("kill({signal:?}): {e}"),
        })?;
        let deadline = Instant::now() + wait;
        let mut guard = guard;
        while guard.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            guard = exited
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(true)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `stop` was usually called
        // already (TestCluster::drop), and this is a no-op then.
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// The monitor thread: spawns the child, reports its pid, waits for it.
fn monitor(mut command: Command, started: &mpsc::Sender<std::io::Result<u32>>, state: &ExitState) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(child.id()));
    // Wait for the exit without reaping (WNOWAIT), so the pid stays reserved
    // until the exit is recorded under the lock.
    let pid = Pid::from_child(&child);
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    ) {}
    let (lock, exited) = &**state;
    let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
    let status = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    *guard = Some(status);
    exited.notify_all();
}

/// Makes the child receive SIGKILL when the thread that spawns it exits (see
/// the module docs), and refuses to start it if that thread is already gone.
#[allow(unsafe_code)]
fn die_with_parent_thread(command: &mut Command) {
    let parent = rustix::process::getpid();
    let hook = move || -> std::io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        if rustix::process::getppid() != Some(parent) {
            // The parent died before the prctl took effect.
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It makes only
    // two raw system calls through rustix (prctl(PR_SET_PDEATHSIG) and
    // getppid), converts errors without allocating (`From<Errno>` wraps the raw
    // OS error code), and touches no locks or shared state, so it is
    // async-signal-safe as `pre_exec` requires.
    unsafe {
        command.pre_exec(hook);
    }
}

/// The last `lines` lines of a log file (at most the last 64 KiB of it).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
