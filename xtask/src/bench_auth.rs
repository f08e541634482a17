//! How `bench flows` reaches the gateway: as no caller at all (no callers configured,
//! plaintext, the embedded default), as a caller with a bearer token, or as a caller named
//! by its client certificate over mutual TLS. Each way gets a gateway configured for it;
//! certificates are made here (a CA, the server's for `localhost`, the client's with a
//! SPIFFE id).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The token the `token` way presents.
const TOKEN: &str = "bench-caller-token-0123456789abcdef";
/// The client certificate's subject in the `mtls` way.
const SUBJECT: &str = "spiffe://bench.local/ns/load/sa/generator";

/// A way of calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Token,
    Mtls,
}

impl Auth {
    pub(crate) const ALL: [Auth; 3] = [Auth::None, Auth::Token, Auth::Mtls];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Token => "token",
            Auth::Mtls => "mtls",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Auth::None => "no callers configured, plaintext",
            Auth::Token => "a caller with a bearer token, plaintext",
            Auth::Mtls => "a caller named by its client certificate, mutual TLS",
        }
    }

    /// `--auth none|token|mtls|all`, a comma-separated list run in its order (repeats
    /// interleave runs); all when not given.
    pub(crate) fn from_args(args: &[String]) -> anyhow::Result<Vec<Auth>> {
        let Some(i) = args.iter().position(|a| a == "--auth") else {
            return Ok(Auth::ALL.to_vec());
        };
        let value = args.get(i + 1).context("--auth needs a value")?;
        let mut ways = Vec::new();
        for name in value.split(',') {
            match name.trim() {
                "all" => ways.extend(Auth::ALL),
                other => match Auth::ALL.iter().find(|a| a.name() == other) {
                    Some(a) => ways.push(*a),
                    None => bail!("--auth takes none, token, mtls or all, not `{other}`"),
                },
            }
        }
        Ok(ways)
    }
}

/// What the clients of one way present.
#[derive(Clone, Default)]
pub(crate) struct Access {
    /// `authorization` metadata on every call.
    pub authorization: Option<MetadataValue<Ascii>>,
    /// TLS, with the client's certificate.
    pub tls: Option<ClientTlsConfig>,
}

/// A gateway's configuration for one way, and what its clients present.
pub(crate) struct Setup {
    pub env: Vec<(String, String)>,
    pub access: Access,
    dir: Option<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn caller_env(name: &str, value: String) -> (String, String) {
    (format!("VERIFY_CALLERS__BENCH__{name}"), value)
}

pub(crate) fn setup(auth: Auth) -> anyhow::Result<Setup> {
    let purposes = caller_env("PURPOSES", "[\"login\"]".to_owned());
    match auth {
        Auth::None => Ok(Setup {
            env: Vec::new(),
            access: Access::default(),
            dir: None,
        }),
        Auth::Token => Ok(Setup {
            env: vec![
                caller_env(
                    "TOKEN_SHA256",
                    hex::encode(Sha256::digest(TOKEN.as_bytes())),
                ),
                purposes,
            ],
            access: Access {
                authorization: Some(format!("Bearer {TOKEN}").parse()?),
                tls: None,
            },
            dir: None,
        }),
        Auth::Mtls => {
            let dir = std::env::temp_dir()
                .join(format!("verify-gateway-bench-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let certificates = Certificates::make(&dir)?;
            let tls = ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(Certificate::from_pem(&certificates.ca_pem))
                .identity(Identity::from_pem(
                    &certificates.client_cert,
                    &certificates.client_key,
                ));
            let file = |name: &str| dir.join(name).display().to_string();
            Ok(Setup {
                env: vec![
                    ("VERIFY_SERVER__TLS__CERT_FILE".to_owned(), file("tls.crt")),
                    ("VERIFY_SERVER__TLS__KEY_FILE".to_owned(), file("tls.key")),
                    (
                        "VERIFY_SERVER__TLS__CLIENT_CA_FILE".to_owned(),
                        file("ca.crt"),
                    ),
                    caller_env("MTLS_SUBJECT", SUBJECT.to_owned()),
                    purposes,
                ],
                access: Access {
                    authorization: None,
                    tls: Some(tls),
                },
                dir: Some(dir),
            })
        }
    }
}

/// The CA and the client's certificate, in PEM; the server's are written to files.
struct Certificates {
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Certificates {
    fn make(dir: &Path) -> anyhow::Result<Certificates> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let leaf = |names: Vec<SanType>, usage| -> anyhow::Result<(String, String)> {
            let mut params = CertificateParams::default();
            params.subject_alt_names = names;
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec![SanType::DnsName("localhost".try_into()?)],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            vec![SanType::URI(SUBJECT.try_into()?)],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        std::fs::write(dir.join("tls.crt"), server_cert)?;
        std::fs::write(dir.join("tls.key"), server_key)?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;
        Ok(Certificates {
            ca_pem: ca.pem(),
            client_cert,
            client_key,
        })
    }
}
