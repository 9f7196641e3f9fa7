//! TLS for both receivers (rustls), with certificates re-read on reload.
//!
//! A background task per listener accepts TCP connections and runs each TLS
//! handshake in its own task (with a deadline, so a slow client holds nothing
//! up); finished streams are handed to the gRPC or HTTP server. The
//! certificate is resolved per handshake from a slot that [`TlsConfig::reload`]
//! swaps, so a renewed certificate applies to new connections without a restart.
//!
//! With a client CA (`tls.client_ca_file`), senders may prove who they are
//! with a certificate (mTLS): it is verified against that CA during the
//! handshake, and its subject's common name travels with the connection
//! ([`PeerIdentity`]) so [`crate::auth`] can map it to a tenant.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

/// Client-certificate authentication (mTLS).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM file of the CA certificates that sign client certificates.
    pub ca_file: PathBuf,
    /// Refuse the handshake of a client without a certificate; when false,
    /// such clients connect and must present a bearer token instead.
    pub required: bool,
}

/// The server certificate and key files, and the rustls config built on them.
#[derive(Clone)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    acceptor: TlsAcceptor,
}

fn client_verifier(client: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let path = &client.ca_file;
    let file_err = |message: String| TlsError::File {
        path: path.clone(),
        message,
    };
    let pem =
        std::fs::read(path).map_err(|e| file_err(format!("cannot read the client CA: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| file_err(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| file_err(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file_err("no CA certificate in the file".into()));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if client.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| file_err(format!("cannot verify clients with this CA: {e}")))
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let cert_pem = std::fs::read(cert)
        .map_err(|e| file_err(cert, format!("cannot read the certificate: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file".into()));
    }
    let key_pem = std::fs::read(key)
        .map_err(|e| file_err(key, format!("cannot read the private key: {e}")))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| file_err(key, "no private key in the file".into()))?;
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_err(key, format!("unusable private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl TlsConfig {
    /// Reads the certificate chain and key (PEM), and the client CA when
    /// client certificates are to be verified.
    pub fn load(
        cert: &Path,
        key: &Path,
        client: Option<&ClientAuth>,
        alpn: &[&[u8]],
    ) -> Result<Self, TlsError> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(load_key(cert, key)?),
        });
        let verifier = client.map(client_verifier).transpose()?;
        let acceptor = Self::acceptor(&resolver, &verifier, alpn)?;
        Ok(TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            resolver,
            verifier,
            acceptor,
        })
    }

    fn acceptor(
        resolver: &Arc<Resolver>,
        verifier: &Option<Arc<dyn ClientCertVerifier>>,
        alpn: &[&[u8]],
    ) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The same certificate with other ALPN protocols (gRPC wants `h2`).
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        Ok(TlsConfig {
            acceptor: Self::acceptor(&self.resolver, &self.verifier, alpn)?,
            ..self.clone()
        })
    }

    /// Whether client certificates are verified.
    pub fn verifies_clients(&self) -> bool {
        self.verifier.is_some()
    }

    /// Re-reads the files; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_key(&self.cert, &self.key)?;
        if let Ok(mut g) = self.resolver.current.write() {
            *g = fresh;
        }
        Ok(())
    }

    /// Accepts TCP on `listener` and yields finished TLS streams; failed
    /// handshakes are logged and dropped.
    pub fn incoming(&self, listener: TcpListener) -> mpsc::Receiver<(TlsConn, SocketAddr)> {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let identity = PeerIdentity {
                                addr: Some(peer),
                                client_cn: client_common_name(&stream),
                            };
                            let conn = TlsConn {
                                stream,
                                peer: identity,
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        rx
    }
}

/// Who is on the other end of a connection, as far as TLS says: inserted
/// into every request's extensions by both servers.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    pub addr: Option<SocketAddr>,
    /// Common name of the subject of the verified client certificate.
    pub client_cn: Option<Arc<str>>,
}

/// The subject common name of the client's verified certificate, if any.
fn client_common_name(stream: &TlsStream<TcpStream>) -> Option<Arc<str>> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.into())
}

/// A finished TLS connection and the identity its handshake proved.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerIdentity
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.io().peer.clone()
    }
}

/// An axum listener over finished TLS streams.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(config: &TlsConfig, listener: TcpListener) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            rx: config.incoming(listener),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (its listener failed for good): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
