//! A TCP forwarder from an address pods can reach to a service on the host's loopback.
//!
//! The local cluster's API server and registry listen on 127.0.0.1 only, so nothing outside the
//! machine reaches them. Pods on the real nodes live in their own network namespaces, where
//! 127.0.0.1 is the pod itself; they reach the host at the nodes' bridge addresses. A
//! [`Forwarder`] listens on such an address and copies bytes both ways to the loopback port,
//! untouched (TLS passes through), one pair of threads per connection. Stopping closes the
//! listener and every open connection.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{Error, Result};

/// How often the acceptor looks for a connection, and for the stop flag.
const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A running forwarder; dropping it stops it.
#[derive(Debug)]
pub struct Forwarder {
    listen: SocketAddr,
    stopping: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `listen` and forwards each connection to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Result<Forwarder> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            Error::io(
                format!("cannot listen on {listen} to forward to {target}"),
                e,
            )
        })?;
        let listen = listener
            .local_addr()
            .map_err(|e| Error::io(format!("no local address for {listen}"), e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stopping, open) = (stopping.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("forward-{listen}"))
                .spawn(move || accept_loop(&listener, target, &stopping, &open))
                .map_err(|e| Error::io("cannot start a forwarding thread", e))?
        };
        Ok(Forwarder {
            listen,
            stopping,
            open,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.listen
    }

    /// Stops accepting and closes every forwarded connection.
    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // The acceptor polls the flag (its listener does not block): a wake-up connection could
        // hang once the listening address is gone, as a node's bridge address is after its stop.
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if let Ok(mut open) = self.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    stopping: &AtomicBool,
    open: &Mutex<Vec<TcpStream>>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stopping.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                // Nothing to accept (or a failed accept): look again shortly.
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if client.set_nonblocking(false).is_err() {
            continue;
        }
        let Ok(upstream) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        if let Ok(mut list) = open.lock() {
            // Connections closed since are dropped from the list here, so it stays short.
            list.retain(|s| s.peer_addr().is_ok());
            for s in [&client, &upstream] {
                if let Ok(clone) = s.try_clone() {
                    list.push(clone);
                }
            }
        }
        let _ = pipe(&client, &upstream);
        let _ = pipe(&upstream, &client);
    }
}

/// Copies `from` to `to` on a thread of its own until `from` ends, then ends `to`'s writing side.
fn pipe(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (mut from, mut to) = (from.try_clone()?, to.try_clone()?);
    std::thread::Builder::new()
        .name("forward-copy".into())
        .spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_go_both_ways_and_stop_closes_open_connections() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = server.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("write");
            // Waits for the forwarder to close the connection.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let mut fwd =
            Forwarder::start("127.0.0.1:0".parse().expect("addr"), target).expect("start");
        let mut c = TcpStream::connect(fwd.address()).expect("connect");
        c.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        fwd.stop();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).ok(), Some(0), "closed by stop");
        echo.join().expect("echo thread");
        assert!(
            TcpStream::connect(fwd.address()).is_err(),
            "no longer listening"
        );
    }
}
