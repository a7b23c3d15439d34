//! Real clients of the sidecar, each with a client certificate: hyper over rustls for HTTP/1.1 and
//! HTTP/2 (ALPN decides), tonic for gRPC. A request line hyper refuses to build (a control
//! character in the path) goes out as raw HTTP/1.1 bytes over the same TLS connection, and the
//! response is read with httparse, hyper's own parser.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::Pair;
use crate::Error;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP version a request goes out with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Response {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Call {
    pub fn get(path: &str) -> Call {
        Call {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// Who connects: the mesh's CA to check the sidecar with, and the caller's certificate.
#[derive(Clone)]
pub struct Caller {
    ca_pem: String,
    pair: Option<Pair>,
    configs: [Arc<rustls::ClientConfig>; 2],
}

fn client_error(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Client(format!("{what}: {e}"))
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Client(format!("reading a certificate: {e}")))
}

impl Caller {
    /// A caller with `pair` as its client certificate (`None`: it presents none).
    pub fn new(ca_pem: &str, pair: Option<Pair>) -> Result<Caller, Error> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca_pem)? {
            roots
                .add(c)
                .map_err(|e| client_error("the CA")(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, Error> {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| client_error("TLS versions")(e.to_string()))?
                .with_root_certificates(roots.clone());
            let mut cfg = match &pair {
                Some(p) => {
                    let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes())
                        .map_err(|e| client_error("the client key")(e.to_string()))?;
                    builder
                        .with_client_auth_cert(certs(&p.cert)?, key)
                        .map_err(|e| client_error("the client certificate")(e.to_string()))?
                }
                None => builder.with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(cfg))
        };
        Ok(Caller {
            ca_pem: ca_pem.to_owned(),
            configs: [config(b"http/1.1")?, config(b"h2")?],
            pair,
        })
    }

    async fn tls(
        &self,
        addr: SocketAddr,
        server_name: &str,
        protocol: Protocol,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let config = self.configs[usize::from(protocol == Protocol::Http2)].clone();
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| client_error("connecting")(e.to_string()))?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| client_error("server name")(e.to_string()))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| client_error("TLS handshake")(e.to_string()))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let want: &[u8] = match protocol {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
        };
        if alpn.as_deref() != Some(want) {
            return Err(Error::Client(format!(
                "ALPN chose {:?}, not {}",
                alpn.map(|a| String::from_utf8_lossy(&a).into_owned()),
                protocol.label()
            )));
        }
        Ok(tls)
    }

    /// Sends `call` over a new TLS connection to `addr` (SNI `server_name`).
    pub async fn send(
        &self,
        addr: SocketAddr,
        server_name: &str,
        protocol: Protocol,
        call: &Call,
    ) -> Result<Response, Error> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send_now(addr, server_name, protocol, call),
        )
        .await
        .map_err(|_| Error::Client(format!("no response in {REQUEST_TIMEOUT:?}")))?
    }

    async fn send_now(
        &self,
        addr: SocketAddr,
        server_name: &str,
        protocol: Protocol,
        call: &Call,
    ) -> Result<Response, Error> {
        let method = Method::from_bytes(call.method.as_bytes())
            .map_err(|e| client_error("method")(e.to_string()))?;
        let uri = match protocol {
            Protocol::Http1 => call.path.parse::<http::Uri>(),
            Protocol::Http2 => format!("https://{server_name}{}", call.path).parse(),
        };
        let Ok(uri) = uri else {
            if protocol == Protocol::Http1 {
                return self.send_raw(addr, server_name, call).await;
            }
            return Err(Error::Client(format!(
                "`{}` is not a request target HTTP/2 clients can send",
                call.path.escape_debug()
            )));
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if protocol == Protocol::Http1 {
            builder = builder.header("host", server_name);
        }
        for (k, v) in &call.headers {
            builder = builder.header(k.as_str(), v.as_slice());
        }
        let request = builder
            .body(Full::new(call.body.clone()))
            .map_err(|e| client_error("building the request")(e.to_string()))?;
        let tls = self.tls(addr, server_name, protocol).await?;
        let response = match protocol {
            Protocol::Http1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| client_error("HTTP/1.1 handshake")(e.to_string()))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            Protocol::Http2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| client_error("HTTP/2 handshake")(e.to_string()))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
        }
        .map_err(|e| client_error("request")(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| client_error("response body")(e.to_string()))?;
        let trailers = collected.trailers().cloned();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// HTTP/1.1 written by hand, for request targets no HTTP library builds.
    async fn send_raw(
        &self,
        addr: SocketAddr,
        server_name: &str,
        call: &Call,
    ) -> Result<Response, Error> {
        let mut tls = self.tls(addr, server_name, Protocol::Http1).await?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\ncontent-length: {}\r\n",
            call.method,
            call.path,
            call.body.len()
        )
        .into_bytes();
        for (k, v) in &call.headers {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&call.body);
        tls.write_all(&head)
            .await
            .map_err(|e| client_error("writing")(e.to_string()))?;
        let mut raw = Vec::new();
        // Envoy closes after answering `connection: close`; a TLS close without close_notify is
        // still the end of the response.
        let _ = tls.read_to_end(&mut raw).await;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let len = match parsed.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => {
                return Err(Error::Client(format!(
                    "no HTTP response: {:?}",
                    String::from_utf8_lossy(&raw)
                )))
            }
        };
        let mut map = HeaderMap::new();
        for h in parsed.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        Ok(Response {
            status: parsed.code.unwrap_or(0),
            headers: map,
            body: Bytes::copy_from_slice(raw.get(len..).unwrap_or_default()),
            trailers: None,
        })
    }

    /// A unary gRPC call with tonic (an empty message, `google.protobuf.Empty` on the wire) to
    /// `path` (`/package.Service/Method`): the status tonic reports (`Ok` for a response).
    pub async fn grpc_unary(
        &self,
        addr: SocketAddr,
        server_name: &str,
        path: &str,
    ) -> Result<tonic::Status, Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(server_name);
        if let Some(p) = &self.pair {
            tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| client_error("gRPC endpoint")(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| client_error("gRPC TLS")(e.to_string()))?
            .timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .map_err(|e| client_error("gRPC connect")(format!("{e:?}")))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| client_error("gRPC channel")(e.to_string()))?;
        let path = http::uri::PathAndQuery::try_from(path.to_owned())
            .map_err(|e| client_error("gRPC path")(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        match grpc.unary(tonic::Request::new(()), path, codec).await {
            Ok(_) => Ok(tonic::Status::ok("")),
            Err(status) => Ok(status),
        }
    }
}
