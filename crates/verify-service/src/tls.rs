//! TLS on the gRPC port, with client certificates when a client CA is configured.
//!
//! Certificates rotate under a running process (cert-manager renews a Secret, Vault
//! re-issues a file), so the files are not read once: before each TLS handshake the
//! acceptor compares the files' metadata (modification time, size, inode) with what it
//! last loaded and, when one changed, builds a new server configuration from them. A new
//! set that does not load (a half-written file, a key that does not match) is logged and
//! the last good one stays in use. Connections already open keep the session they
//! negotiated; HTTP/2 clients reconnect in their own time.
//!
//! Handshakes run each on a task of their own, with a deadline, so a client that stalls
//! its handshake holds up nobody else's connection.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::Stream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them.
const READY_CONNECTIONS: usize = 64;

/// The files `[server.tls]` names, and whether clients must present a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `None`: clients
    /// present none (server-only TLS).
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: whether a client without a certificate is refused at the
    /// handshake, or admitted to name itself with a bearer token.
    pub client_certificate: ClientCertificate,
}

/// `server.tls.client_certificate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificate {
    /// Every client presents a certificate of the client CA (mutual TLS only).
    #[default]
    Required,
    /// A client may present none, and then needs a bearer token; a certificate it does
    /// present must still chain to the client CA and be valid.
    Optional,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }
}

/// What identifies one version of a file: a rename over it (Kubernetes swaps a Secret's
/// directory by symlink) changes its inode, a rewrite its time or size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64, u64)>>);

impl Stamp {
    fn of(files: &TlsFiles) -> Stamp {
        Stamp(
            files
                .paths()
                .map(|p| {
                    let m = fs::metadata(p).ok()?;
                    Some((m.modified().ok()?, m.len(), m.ino(), m.dev()))
                })
                .collect(),
        )
    }
}

struct Loaded {
    stamp: Stamp,
    acceptor: TlsAcceptor,
}

/// The server's TLS configuration, re-read when its files change.
pub struct Certificates {
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> anyhow::Result<Certificates> {
        let stamp = Stamp::of(&files);
        let config = server_config(&files)?;
        Ok(Certificates {
            files,
            loaded: Mutex::new(Loaded {
                stamp,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
        })
    }

    /// The acceptor for the next handshake: from the files as they are now, when they
    /// changed since the last load and the new set loads; else the last good one.
    fn acceptor(&self) -> TlsAcceptor {
        let mut loaded = match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stamp = Stamp::of(&self.files);
        if stamp != loaded.stamp {
            // Whatever the outcome, this version of the files is not tried again.
            loaded.stamp = stamp;
            match server_config(&self.files) {
                Ok(config) => {
                    loaded.acceptor = TlsAcceptor::from(Arc::new(config));
                    tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificates reloaded");
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "TLS files changed but do not load; serving the previous certificates"
                ),
            }
        }
        loaded.acceptor.clone()
    }
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if certs.is_empty() {
        bail!("{what} {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let chain = read_certs(&files.cert_file, "server.tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).with_context(|| {
        format!(
            "reading server.tls.key_file {} (a PEM private key)",
            files.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(path, "server.tls.client_ca_file")? {
                roots.add(ca).with_context(|| {
                    format!(
                        "server.tls.client_ca_file {}: a certificate is not a usable CA",
                        path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match files.client_certificate {
                ClientCertificate::Required => verifier,
                ClientCertificate::Optional => verifier.allow_unauthenticated(),
            }
            .build()
            .context("server.tls.client_ca_file: building the client certificate check")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "server.tls.cert_file {} and key_file {} do not make a certificate and its key",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a call knows of its connection's TLS session. Tonic puts it in every request's
/// extensions (it is the connection's [`Connected::ConnectInfo`]).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Who the client certificate names ([`certificate_subject`]), read once at the
    /// handshake rather than parsed again on every call; `None` without a certificate.
    pub subject: Option<Arc<str>>,
}

/// A connection after its TLS handshake, with what its client certificate names.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connection {
    fn new(stream: TlsStream<TcpStream>) -> Connection {
        let subject = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(certificate_subject)
            .map(Arc::from);
        Connection {
            stream,
            peer: Peer { subject },
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The connections of `listener` after their TLS handshake, for tonic's
/// `serve_with_incoming`. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    certificates: Arc<Certificates>,
) -> impl Stream<Item = io::Result<Connection>> {
    let (ready, taken) = mpsc::channel(READY_CONNECTIONS);
    tokio::spawn(accept_loop(listener, certificates, ready));
    futures::stream::unfold(taken, |mut taken| async move {
        taken.recv().await.map(|stream| (Ok(stream), taken))
    })
}

async fn accept_loop(
    listener: TcpListener,
    certificates: Arc<Certificates>,
    ready: mpsc::Sender<Connection>,
) {
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accepting a gRPC connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // As tonic does on listeners it binds: a response's last frames must not wait
        // for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = certificates.acceptor();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send(Connection::new(stream)).await;
                }
                // A client that hangs up inside the handshake, as TCP probes do (a load
                // balancer's, the compose health check's): not worth a line each.
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, error = %e, "connection closed before a TLS handshake");
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Who a client certificate names: its first URI subject alternative name (a SPIFFE id
/// such as `spiffe://cluster.local/ns/shop/sa/checkout`), or failing that its first DNS
/// name. `None` for a certificate that names neither or does not parse.
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    let names = &names.value.general_names;
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
        })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn certificate(names: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().expect("dns name"))
    }

    fn uri(name: &str) -> SanType {
        SanType::URI(name.try_into().expect("uri"))
    }

    #[test]
    fn the_subject_is_the_first_uri_san_else_the_first_dns_san() {
        let spiffe = "spiffe://cluster.local/ns/shop/sa/checkout";
        let both = certificate(vec![
            dns("checkout.shop.svc"),
            uri(spiffe),
            uri("spiffe://x/y"),
        ]);
        assert_eq!(certificate_subject(&both).as_deref(), Some(spiffe));
        let dns_only = certificate(vec![dns("checkout.shop.svc"), dns("other.svc")]);
        assert_eq!(
            certificate_subject(&dns_only).as_deref(),
            Some("checkout.shop.svc")
        );
        let neither = certificate(vec![SanType::IpAddress([10, 0, 0, 1].into())]);
        assert_eq!(certificate_subject(&neither), None);
        assert_eq!(
            certificate_subject(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }

    #[test]
    fn a_certificate_with_a_key_that_is_not_its_own_does_not_load() {
        let dir = std::env::temp_dir().join(format!("vg-tls-unit-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let other_key = KeyPair::generate().expect("key");
        fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
        fs::write(dir.join("tls.key"), other_key.serialize_pem()).expect("write");
        let files = TlsFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            client_ca_file: None,
            client_certificate: ClientCertificate::Required,
        };
        let error = format!(
            "{:#}",
            Certificates::load(files.clone()).expect_err("mismatch")
        );
        assert!(
            error.contains("do not make a certificate and its key"),
            "{error}"
        );
        fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
        assert!(Certificates::load(files).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
