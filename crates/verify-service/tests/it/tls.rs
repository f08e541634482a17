//! TLS on the gRPC port, with real handshakes: certificates made here with `rcgen`, the
//! gateway started with `[server.tls]`, clients speaking gRPC over rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::verify::v1::verify_service_client::VerifyServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use verify_service::app::Gateway;
use verify_service::config::{self, Overrides, TwilioEnv};

const SPIFFE_ID: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn authority(name: &str) -> Issuer {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate and its key, in PEM, and the certificate's DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn leaf(
    issuer: &Issuer,
    names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> Leaf {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test leaf");
    params.subject_alt_names = names;
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn server_leaf(issuer: &Issuer) -> Leaf {
    leaf(
        issuer,
        vec![SanType::DnsName("localhost".try_into().expect("name"))],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    )
}

fn client_leaf(issuer: &Issuer, expired: bool) -> Leaf {
    leaf(
        issuer,
        vec![
            SanType::DnsName("checkout.shop.svc".try_into().expect("name")),
            SanType::URI(SPIFFE_ID.try_into().expect("uri")),
        ],
        ExtendedKeyUsagePurpose::ClientAuth,
        expired,
    )
}

/// Writes `contents` to `path` the way Kubernetes and cert-manager replace a file: a new
/// file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// The shipped defaults under `toml`, on free loopback ports, with data under `dir`.
fn settings(toml: &str, dir: &Path) -> config::Settings {
    let overrides = Overrides {
        grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
        sandbox_addr: Some("127.0.0.1:0".parse().expect("addr")),
        webhooks_addr: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(dir.join("data")),
        ..Overrides::default()
    };
    config::load_from_str(toml, &overrides, &TwilioEnv::default()).expect("settings")
}

struct TlsGateway {
    addr: std::net::SocketAddr,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TlsGateway {
    /// Starts the embedded gateway serving `server` over TLS, with `client_ca` as the CA
    /// client certificates must chain to.
    async fn start(server: &Leaf, client_ca: Option<&Issuer>) -> TlsGateway {
        TlsGateway::start_with(server, client_ca, "").await
    }

    /// [`TlsGateway::start`] with `extra` configuration.
    async fn start_with(server: &Leaf, client_ca: Option<&Issuer>, extra: &str) -> TlsGateway {
        let dir = std::env::temp_dir().join(format!("vg-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tls.crt"), &server.cert_pem).expect("cert");
        std::fs::write(dir.join("tls.key"), &server.key_pem).expect("key");
        let mut toml = format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            dir.join("tls.crt"),
            dir.join("tls.key")
        );
        if let Some(ca) = client_ca {
            std::fs::write(dir.join("ca.crt"), ca.pem()).expect("ca");
            toml.push_str(&format!("client_ca_file = {:?}\n", dir.join("ca.crt")));
        }
        toml.push_str(extra);
        let settings = settings(&toml, &dir);
        let gateway = Gateway::bind(&settings).await.expect("gateway binds");
        let addr = gateway.grpc_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        TlsGateway {
            addr,
            dir,
            stop: Some(stop),
            task,
        }
    }

    /// A channel over TLS, trusting `ca` for the server and presenting `identity`.
    async fn channel(&self, ca: &Issuer, identity: Option<&Leaf>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(ca.pem()));
        if let Some(leaf) = identity {
            tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .map_err(|e| format!("tls config: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    /// A gRPC health check over TLS, trusting `ca` for the server and presenting `identity`.
    async fn health(&self, ca: &Issuer, identity: Option<&Leaf>) -> Result<(), String> {
        HealthClient::new(self.channel(ca, identity).await?)
            .check(HealthCheckRequest::default())
            .await
            .map(drop)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    /// The certificate the server presents in a new handshake.
    async fn served_certificate(&self, ca: &Issuer) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        let config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("tcp");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("certificates")[0]
            .clone()
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("gateway task")
            .expect("gateway ran cleanly");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_valid_certificates_of_the_client_ca() {
    let ca = authority("verify-gateway test CA");
    let other_ca = authority("some other CA");
    let gateway = TlsGateway::start(&server_leaf(&ca), Some(&ca)).await;

    let valid = client_leaf(&ca, false);
    gateway
        .health(&ca, Some(&valid))
        .await
        .expect("a certificate of the client CA is admitted");
    assert_eq!(
        verify_service::tls::certificate_subject(&valid.der).as_deref(),
        Some(SPIFFE_ID),
        "the caller is named by the certificate's URI SAN"
    );

    let refused = [
        ("no certificate", None),
        ("another CA's", Some(client_leaf(&other_ca, false))),
        ("an expired one", Some(client_leaf(&ca, true))),
    ];
    for (what, identity) in refused {
        let outcome = gateway.health(&ca, identity.as_ref()).await;
        assert!(outcome.is_err(), "{what}: admitted");
    }
    // The refused handshakes did not hurt the listener.
    gateway
        .health(&ca, Some(&valid))
        .await
        .expect("still serving");
    gateway.shutdown().await;
}

#[tokio::test]
async fn plaintext_clients_get_nothing_from_a_tls_port() {
    let ca = authority("verify-gateway test CA");
    let gateway = TlsGateway::start(&server_leaf(&ca), None).await;
    gateway.health(&ca, None).await.expect("TLS client served");
    let channel = Channel::from_shared(format!("http://{}", gateway.addr))
        .expect("uri")
        .connect()
        .await;
    let answered = match channel {
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "a plaintext call was answered");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_without_a_restart() {
    let ca = authority("verify-gateway test CA");
    let first = server_leaf(&ca);
    let gateway = TlsGateway::start(&first, None).await;
    assert_eq!(gateway.served_certificate(&ca).await, first.der);

    // A new key and certificate, as a renewal writes them.
    let second = server_leaf(&ca);
    replace(&gateway.dir.join("tls.key"), &second.key_pem);
    replace(&gateway.dir.join("tls.crt"), &second.cert_pem);
    assert_eq!(gateway.served_certificate(&ca).await, second.der);
    gateway
        .health(&ca, None)
        .await
        .expect("served with the new certificate");

    // A broken file (a rotation caught half-way) keeps the last good certificate.
    replace(&gateway.dir.join("tls.crt"), "not a certificate");
    assert_eq!(gateway.served_certificate(&ca).await, second.der);
    gateway.shutdown().await;
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_the_start_with_their_name() {
    let dir = std::env::temp_dir().join(format!("vg-tls-{}", uuid::Uuid::new_v4()));
    let toml = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.join("missing.crt"),
        dir.join("missing.key")
    );
    let settings = settings(&toml, &dir);
    let error = match Gateway::bind(&settings).await {
        Ok(_) => panic!("started without its certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("server.tls.cert_file") && error.contains("missing.crt"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_certificate_names_its_caller() {
    let ca = authority("verify-gateway test CA");
    let callers =
        format!("[callers.checkout]\nmtls_subject = \"{SPIFFE_ID}\"\npurposes = [\"login\"]\n");
    let gateway = TlsGateway::start_with(&server_leaf(&ca), Some(&ca), &callers).await;
    let start = |to: &str| proto::verify::v1::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        ..Default::default()
    };

    let checkout = client_leaf(&ca, false);
    let channel = gateway
        .channel(&ca, Some(&checkout))
        .await
        .expect("channel");
    VerifyServiceClient::new(channel)
        .start_verification(start("+14155552711"))
        .await
        .expect("the certificate's caller starts");

    // A certificate of the same CA for a workload that is not a caller.
    let stranger = leaf(
        &ca,
        vec![SanType::DnsName(
            "stranger.other.svc".try_into().expect("name"),
        )],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let channel = gateway
        .channel(&ca, Some(&stranger))
        .await
        .expect("channel");
    let refused = VerifyServiceClient::new(channel)
        .start_verification(start("+14155552722"))
        .await
        .expect_err("not a caller");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_optional_client_certificate_admits_callers_named_by_token() {
    let ca = authority("verify-gateway test CA");
    let other_ca = authority("some other CA");
    let token = "app-token-0123456789abcdef";
    let digest = hex::encode(verify_service::auth::token_digest(token));
    let config = format!(
        "client_certificate = \"optional\"\n\
         [callers.checkout]\nmtls_subject = \"{SPIFFE_ID}\"\npurposes = [\"login\"]\n\
         [callers.app]\ntoken_sha256 = \"{digest}\"\npurposes = [\"login\"]\n"
    );
    let gateway = TlsGateway::start_with(&server_leaf(&ca), Some(&ca), &config).await;
    let start = |to: &str, token: Option<&str>| {
        let mut request = tonic::Request::new(proto::verify::v1::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            ..Default::default()
        });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        request
    };

    // Without a certificate: the handshake is admitted, the call needs a token.
    let bare = VerifyServiceClient::new(gateway.channel(&ca, None).await.expect("handshake"));
    bare.clone()
        .start_verification(start("+14155552733", Some(token)))
        .await
        .expect("a caller named by its token");
    let anonymous = bare
        .clone()
        .start_verification(start("+14155552744", None))
        .await
        .expect_err("nobody");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );

    // A certificate still names its caller, and one the client CA did not issue, or an
    // expired one, is still refused at the handshake.
    let checkout = gateway
        .channel(&ca, Some(&client_leaf(&ca, false)))
        .await
        .expect("channel");
    VerifyServiceClient::new(checkout)
        .start_verification(start("+14155552755", None))
        .await
        .expect("the certificate's caller starts");
    for (what, identity) in [
        ("another CA's", client_leaf(&other_ca, false)),
        ("an expired one", client_leaf(&ca, true)),
    ] {
        let outcome = gateway.health(&ca, Some(&identity)).await;
        assert!(outcome.is_err(), "{what}: admitted");
    }
    gateway.shutdown().await;
}
