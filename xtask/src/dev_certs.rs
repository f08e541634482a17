//! `cargo xtask dev-certs`: a development CA and the certificates that the compose stack
//! serves and calls with, so that its gRPC port runs TLS and mutual TLS from the start.
//!
//! The CA is kept across runs (clients that trust it keep working) unless `--force`; the
//! server and client certificates are issued anew on every run. Each file is written
//! beside its final name and renamed over it, so a running gateway, which re-reads its
//! files when they change, never loads half a file.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{Datelike, Days, NaiveDate, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// Where the certificates go unless `--out` says otherwise (git-ignored); docker-compose.yml
/// mounts this directory.
pub const DEFAULT_OUT: &str = "deploy/dev-certs";

/// The client certificate's URI SAN: the subject that names the compose stack's caller
/// `app` (`VERIFY_CALLERS__APP__MTLS_SUBJECT` in deploy/compose.env.example).
pub const CLIENT_SUBJECT: &str = "spiffe://verify-gateway.local/ns/dev/sa/app";

/// The names the gateway is reached by: on the host (published ports on loopback) and, as
/// the compose service `verify-service`, from other containers.
const SERVER_NAMES: [&str; 4] = ["localhost", "verify-service", "127.0.0.1", "::1"];

const CA_DAYS: u64 = 365;
const LEAF_DAYS: u64 = 90;
const CA_NAME: &str = "verify-gateway development CA";

/// What `--out`, `--force` and `--name` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub out: PathBuf,
    pub force: bool,
    /// Names (DNS or IP) the server certificate carries beside [`SERVER_NAMES`].
    pub extra_names: Vec<String>,
}

fn usage() -> &'static str {
    "usage: cargo xtask dev-certs [--out DIR] [--force] [--name HOST]...\n  \
     --out DIR    where to write (default deploy/dev-certs)\n  \
     --force      make a new CA even when DIR holds one\n  \
     --name HOST  one more DNS name or IP address for the server certificate (repeatable)"
}

fn parse_args(root: &Path, args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        out: root.join(DEFAULT_OUT),
        force: false,
        extra_names: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => {
                let dir = args.next().context("--out needs a directory")?;
                options.out = PathBuf::from(dir);
            }
            "--name" => {
                let name = args.next().context("--name needs a host name or address")?;
                options.extra_names.push(name.clone());
            }
            "--force" => options.force = true,
            "-h" | "--help" => {
                eprintln!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{}", usage()),
        }
    }
    Ok(options)
}

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let options = parse_args(root, args)?;
    let written = make(&options, Utc::now().date_naive())?;
    print_summary(root, &options, &written);
    Ok(())
}

/// What one run produced, for the summary.
#[derive(Debug)]
pub struct Written {
    pub new_ca: bool,
    pub ca_expires: NaiveDate,
    pub leaves_expire: NaiveDate,
    pub server_names: Vec<String>,
}

/// A file, its mode and its contents.
struct Output<'a> {
    name: &'static str,
    mode: u32,
    contents: &'a str,
}

/// Writes the CA (unless one is kept), the server and the client certificate into
/// `options.out`, dated from `today`.
pub fn make(options: &Options, today: NaiveDate) -> anyhow::Result<Written> {
    let out = &options.out;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let leaves_expire = today + Days::new(LEAF_DAYS);
    let (ca_cert_pem, ca_key_pem, ca_expires, new_ca) = ca(out, options.force, today)?;
    if ca_expires < leaves_expire {
        bail!(
            "the CA in {} expires on {ca_expires}, before certificates issued today would \
             ({leaves_expire}): run again with --force for a new CA",
            out.display()
        );
    }
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("reading the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).context("reading the CA")?;

    let mut server_names: Vec<String> = SERVER_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in &options.extra_names {
        if !server_names.contains(name) {
            server_names.push(name.clone());
        }
    }
    let sans = server_names
        .iter()
        .map(|name| san(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let server = leaf(
        "verify-gateway",
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        today,
    );
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;
    let client = leaf(
        "app",
        vec![SanType::URI(CLIENT_SUBJECT.try_into()?)],
        ExtendedKeyUsagePurpose::ClientAuth,
        today,
    );
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let mut files = Vec::new();
    if new_ca {
        files.push(Output {
            name: "ca.key",
            mode: 0o600,
            contents: &ca_key_pem,
        });
        files.push(Output {
            name: "ca.crt",
            mode: 0o644,
            contents: &ca_cert_pem,
        });
    }
    let (server_key_pem, client_key_pem) = (server_key.serialize_pem(), client_key.serialize_pem());
    let (server_pem, client_pem) = (server_cert.pem(), client_cert.pem());
    files.extend([
        // The gateway's container runs as uid 10001 and reads this file through a bind
        // mount from the host user's directory: owner-only would lock it out. It is a
        // development key for loopback names only; the CA's and the client's keys stay 0600.
        Output {
            name: "server.key",
            mode: 0o644,
            contents: &server_key_pem,
        },
        Output {
            name: "server.crt",
            mode: 0o644,
            contents: &server_pem,
        },
        Output {
            name: "client.key",
            mode: 0o600,
            contents: &client_key_pem,
        },
        Output {
            name: "client.crt",
            mode: 0o644,
            contents: &client_pem,
        },
    ]);
    for file in &files {
        write_replacing(&out.join(file.name), file.mode, file.contents)?;
    }
    Ok(Written {
        new_ca,
        ca_expires,
        leaves_expire,
        server_names,
    })
}

/// The CA's certificate and key (PEM), when it expires, and whether it is new: the one in
/// `out` unless `force`, else a new one (not yet written).
fn ca(
    out: &Path,
    force: bool,
    today: NaiveDate,
) -> anyhow::Result<(String, String, NaiveDate, bool)> {
    let (cert_path, key_path) = (out.join("ca.crt"), out.join("ca.key"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) if !force => {
            let cert = fs::read_to_string(&cert_path)
                .with_context(|| format!("reading {}", cert_path.display()))?;
            let key = fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let expires = check_kept_ca(&cert, &key).with_context(|| {
                format!("{}: run again with --force for a new CA", out.display())
            })?;
            Ok((cert, key, expires, false))
        }
        (true, false) | (false, true) if !force => bail!(
            "{} holds only one of ca.crt and ca.key: run again with --force for a new CA",
            out.display()
        ),
        _ => {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.distinguished_name.push(DnType::CommonName, CA_NAME);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let expires = today + Days::new(CA_DAYS);
            set_validity(&mut params, today, expires);
            let key = KeyPair::generate()?;
            let key_pem = key.serialize_pem();
            let ca = CertifiedIssuer::self_signed(params, key)?;
            Ok((ca.pem(), key_pem, expires, true))
        }
    }
}

/// A kept CA must be a CA whose key is the one beside it; returns its expiry date.
fn check_kept_ca(cert_pem: &str, key_pem: &str) -> anyhow::Result<NaiveDate> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("ca.crt is not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("ca.crt does not parse: {e}"))?;
    if !cert.is_ca() {
        bail!("ca.crt is not a CA certificate");
    }
    let key = KeyPair::from_pem(key_pem).context("ca.key is not a PEM private key")?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        bail!("ca.key is not the key of ca.crt");
    }
    let expires = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .context("ca.crt's expiry is out of range")?;
    Ok(expires.date_naive())
}

fn leaf(
    common_name: &str,
    names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    today: NaiveDate,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    // From the start of today (UTC): a clock a little behind still accepts it.
    set_validity(&mut params, today, today + Days::new(LEAF_DAYS));
    params
}

fn san(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        bail!("`{name}` is neither an IP address nor a DNS name");
    }
    Ok(SanType::DnsName(name.try_into()?))
}

/// Valid from the start (UTC) of `from` to the start of `until`.
fn set_validity(params: &mut CertificateParams, from: NaiveDate, until: NaiveDate) {
    // `month()` is 1 to 12 and `day()` 1 to 31: both fit in u8.
    let midnight = |d: NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = midnight(from);
    params.not_after = midnight(until);
}

/// Writes `contents` to a temporary file beside `path` with `mode`, then renames it over
/// `path`.
fn write_replacing(path: &Path, mode: u32, contents: &str) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a file name")?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The umask may have narrowed `mode`; the mode is meant as written.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn print_summary(root: &Path, options: &Options, written: &Written) {
    let out = &options.out;
    let shown = out.strip_prefix(root).unwrap_or(out).display().to_string();
    let ca = if written.new_ca {
        format!(
            "ca.crt, ca.key          a new development CA, valid until {}",
            written.ca_expires
        )
    } else {
        format!(
            "ca.crt, ca.key          kept (valid until {}; --force makes a new one)",
            written.ca_expires
        )
    };
    println!("wrote to {}:", out.display());
    println!("  {ca}");
    println!(
        "  server.crt, server.key  for {}, valid until {}",
        written.server_names.join(", "),
        written.leaves_expire
    );
    println!(
        "  client.crt, client.key  the caller `app`: {CLIENT_SUBJECT}, valid until {}",
        written.leaves_expire
    );
    println!();
    println!("next:");
    if options.out == root.join(DEFAULT_OUT) {
        println!("  cp -n deploy/compose.env.example deploy/compose.env");
        println!("  docker-compose --env-file deploy/compose.env --profile dev up -d --build");
        println!(
            "  PORT=$(docker-compose --env-file deploy/compose.env port --index=1 verify-service 50051 | cut -d: -f2)"
        );
    } else {
        println!("  VERIFY_SERVER__TLS__CERT_FILE={shown}/server.crt \\");
        println!("  VERIFY_SERVER__TLS__KEY_FILE={shown}/server.key \\");
        println!("  VERIFY_SERVER__TLS__CLIENT_CA_FILE={shown}/ca.crt \\");
        println!("  VERIFY_CALLERS__APP__MTLS_SUBJECT={CLIENT_SUBJECT} \\");
        println!("  VERIFY_CALLERS__APP__PURPOSES='[\"login\"]' verify-gateway serve");
        println!("  PORT=50051");
    }
    println!(
        "  grpcurl -cacert {shown}/ca.crt -cert {shown}/client.crt -key {shown}/client.key \\\n    \
         -d '{{\"purpose\":\"login\",\"to\":\"+14155552671\"}}' \\\n    \
         localhost:$PORT verify.v1.VerifyService/StartVerification"
    );
    println!(
        "Run this again to renew the server and client certificates; the gateway picks up the new files without a restart."
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-dev-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn options(out: &Path) -> Options {
        Options {
            out: out.to_path_buf(),
            force: false,
            extra_names: vec!["gateway.test".to_owned()],
        }
    }

    fn der(dir: &Path, name: &str) -> Vec<u8> {
        let text = fs::read(dir.join(name)).expect("read");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).expect("pem");
        pem.contents
    }

    fn names(cert: &X509Certificate<'_>) -> BTreeSet<String> {
        let sans = cert
            .subject_alternative_name()
            .expect("one SAN extension")
            .expect("a SAN extension");
        sans.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => (*d).to_owned(),
                GeneralName::URI(u) => (*u).to_owned(),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => Ipv4Addr::from(<[u8; 4]>::try_from(*ip).expect("4")).to_string(),
                    16 => Ipv6Addr::from(<[u8; 16]>::try_from(*ip).expect("16")).to_string(),
                    _ => panic!("odd IP SAN"),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 1).expect("date")
    }

    #[test]
    fn the_certificates_chain_to_the_ca_and_name_the_gateway_and_the_caller() {
        let dir = temp_dir("chain");
        let written = make(&options(&dir), today()).expect("make");
        assert!(written.new_ca);

        let ca_der = der(&dir, "ca.crt");
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        assert!(ca.is_ca());
        assert_eq!(ca.subject(), ca.issuer(), "self-signed");
        ca.verify_signature(None).expect("the CA signs itself");

        let server_der = der(&dir, "server.crt");
        let (_, server) = x509_parser::parse_x509_certificate(&server_der).expect("server");
        assert_eq!(server.issuer(), ca.subject());
        server
            .verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert!(!server.is_ca());
        assert_eq!(
            names(&server),
            [
                "localhost",
                "verify-service",
                "127.0.0.1",
                "::1",
                "gateway.test"
            ]
            .into_iter()
            .map(str::to_owned)
            .collect()
        );
        let eku = server
            .extended_key_usage()
            .expect("one EKU")
            .expect("EKU")
            .value;
        assert!(eku.server_auth && !eku.client_auth);

        let client_der = der(&dir, "client.crt");
        let (_, client) = x509_parser::parse_x509_certificate(&client_der).expect("client");
        client
            .verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert_eq!(names(&client), BTreeSet::from([CLIENT_SUBJECT.to_owned()]));
        let eku = client
            .extended_key_usage()
            .expect("one EKU")
            .expect("EKU")
            .value;
        assert!(eku.client_auth && !eku.server_auth);

        let day = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp()
        };
        assert_eq!(server.validity().not_before.timestamp(), day(today()));
        assert_eq!(
            server.validity().not_after.timestamp(),
            day(today() + Days::new(LEAF_DAYS))
        );
        assert_eq!(
            ca.validity().not_after.timestamp(),
            day(today() + Days::new(CA_DAYS))
        );

        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("client.key")), 0o600);
        assert_eq!(mode(&dir.join("server.key")), 0o644);
        assert_eq!(mode(&dir.join("server.crt")), 0o644);
        let keys_match = |cert: &X509Certificate<'_>, key: &str| {
            let key = KeyPair::from_pem(&fs::read_to_string(dir.join(key)).expect("key"))
                .expect("PEM key");
            cert.public_key().raw == key.subject_public_key_info().as_slice()
        };
        assert!(keys_match(&ca, "ca.key"));
        assert!(keys_match(&server, "server.key"));
        assert!(keys_match(&client, "client.key"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_run_keeps_the_ca_and_renews_the_rest_unless_forced() {
        let dir = temp_dir("keep");
        make(&options(&dir), today()).expect("first");
        let read = |name: &str| fs::read_to_string(dir.join(name)).expect("read");
        let (ca, server) = (read("ca.crt"), read("server.crt"));

        let later = today() + Days::new(30);
        let written = make(&options(&dir), later).expect("second");
        assert!(!written.new_ca);
        assert_eq!(read("ca.crt"), ca, "the CA is kept");
        assert_ne!(
            read("server.crt"),
            server,
            "the server certificate is renewed"
        );
        let (ca_der, renewed_der) = (der(&dir, "ca.crt"), der(&dir, "server.crt"));
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        let (_, renewed) = x509_parser::parse_x509_certificate(&renewed_der).expect("server");
        renewed
            .verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the kept CA");
        assert_eq!(renewed.issuer(), ca_cert.subject());

        // Too close to the CA's end for a new certificate's 90 days.
        let late = today() + Days::new(CA_DAYS - 10);
        let error = format!("{:#}", make(&options(&dir), late).expect_err("CA too old"));
        assert!(error.contains("--force"), "{error}");

        let forced = Options {
            force: true,
            ..options(&dir)
        };
        assert!(make(&forced, late).expect("forced").new_ca);
        assert_ne!(read("ca.crt"), ca, "--force makes a new CA");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ca_with_another_key_is_refused() {
        let dir = temp_dir("mismatch");
        make(&options(&dir), today()).expect("first");
        fs::copy(dir.join("client.key"), dir.join("ca.key")).expect("copy");
        let error = format!("{:#}", make(&options(&dir), today()).expect_err("mismatch"));
        assert!(error.contains("ca.key is not the key of ca.crt"), "{error}");
        fs::remove_file(dir.join("ca.key")).expect("remove");
        let error = format!("{:#}", make(&options(&dir), today()).expect_err("half"));
        assert!(error.contains("only one of ca.crt and ca.key"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn arguments() {
        let root = Path::new("/repo");
        let check = |args: &[&str], expected: Options| {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            assert_eq!(parse_args(root, &args).expect("parses"), expected);
        };
        check(
            &[],
            Options {
                out: root.join(DEFAULT_OUT),
                force: false,
                extra_names: vec![],
            },
        );
        check(
            &[
                "--out",
                "/etc/verify-gateway/tls",
                "--force",
                "--name",
                "gw.example",
                "--name",
                "10.0.0.5",
            ],
            Options {
                out: "/etc/verify-gateway/tls".into(),
                force: true,
                extra_names: vec!["gw.example".into(), "10.0.0.5".into()],
            },
        );
        assert!(parse_args(root, &["--out".to_owned()]).is_err());
        assert!(parse_args(root, &["--bogus".to_owned()]).is_err());
        assert!(san("not a name!").is_err());
    }

    /// The compose stack names its caller by the subject of the certificate made here.
    #[test]
    fn the_compose_caller_is_the_client_certificate_s_subject() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("root");
        let env = fs::read_to_string(root.join("deploy/compose.env.example")).expect("read");
        let line = format!("VERIFY_CALLERS__APP__MTLS_SUBJECT={CLIENT_SUBJECT}");
        assert!(
            env.lines().any(|l| l == line),
            "compose.env.example lacks {line}"
        );
    }
}
