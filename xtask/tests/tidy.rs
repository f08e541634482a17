//! Tidy checks: the dependency rules of the architecture, read from `cargo metadata`, so a
//! change that crosses a wall fails `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Normal (non-dev, non-build) dependencies of every workspace package.
fn workspace_deps() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let mut deps = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_owned();
        let normal = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().expect("dep name").to_owned())
            .collect();
        deps.insert(name, normal);
    }
    deps
}

const SERVICES: [&str; 2] = ["verify-service", "webhook-ingest"];
const IO_CRATES: [&str; 11] = [
    "tokio",
    "sqlx",
    "reqwest",
    "tonic",
    "lapin",
    "axum",
    "governor",
    "hyper",
    "mio",
    "std-fs",
    "opentelemetry-otlp",
];

#[test]
fn pure_crates_touch_no_io() {
    let deps = workspace_deps();
    for pure in ["domain", "policy", "fraud"] {
        let d = deps
            .get(pure)
            .unwrap_or_else(|| panic!("`{pure}` is not in the workspace"));
        let bad: Vec<_> = d
            .iter()
            .filter(|x| IO_CRATES.contains(&x.as_str()))
            .collect();
        assert!(
            bad.is_empty(),
            "`{pure}` must stay pure but depends on {bad:?}"
        );
    }
}

#[test]
fn workspace_edges_follow_the_design() {
    let deps = workspace_deps();
    // Which workspace crates each crate may depend on (normal dependencies).
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("domain", &[][..]),
        ("policy", &["domain"][..]),
        ("fraud", &["domain"][..]),
        ("ratelimit", &["domain"][..]),
        ("twilio", &["domain"][..]),
        ("storage", &["domain"][..]),
        ("messaging", &["domain"][..]),
        ("telemetry", &[][..]),
        ("proto", &[][..]),
        ("http-listener", &[][..]),
        ("twilio-sandbox", &["domain", "http-listener"][..]),
        ("testkit", &[][..]),
        ("xtask", &["proto"][..]),
    ]);
    for name in allowed.keys() {
        assert!(
            deps.contains_key(*name),
            "the tidy table names `{name}`, which is not in the workspace"
        );
    }
    for (name, d) in &deps {
        let internal: Vec<&str> = d
            .iter()
            .map(String::as_str)
            .filter(|x| deps.contains_key(*x))
            .collect();
        for dep in &internal {
            // The one exception: the embedded mode runs webhook-ingest's server inside the
            // verify-gateway process, as a library.
            let embedded = name == "verify-service" && *dep == "webhook-ingest";
            assert!(
                !SERVICES.contains(dep) || embedded,
                "`{name}` depends on the service crate `{dep}`: nothing may depend on a service \
                 (but verify-service on webhook-ingest, for the embedded mode)"
            );
        }
        if name == "webhook-ingest" {
            assert!(
                !internal.contains(&"proto"),
                "webhook-ingest must not depend on proto"
            );
            continue;
        }
        if SERVICES.contains(&name.as_str()) {
            continue;
        }
        let ok = allowed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("`{name}` is not in the tidy table: add its allowed edges"));
        for dep in internal {
            assert!(
                ok.contains(&dep),
                "`{name}` may not depend on `{dep}` (allowed: {ok:?})"
            );
        }
    }
}

#[test]
fn testkit_is_only_a_dev_dependency() {
    for (name, d) in workspace_deps() {
        assert!(
            !d.contains("testkit"),
            "`{name}` depends on `testkit` outside [dev-dependencies]: test support must not \
             reach a shipped binary"
        );
    }
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/ exists");
    let mut manifests: Vec<_> = crates
        .filter_map(Result::ok)
        .map(|e| e.path().join("Cargo.toml"))
        .collect();
    manifests.push(root.join("xtask/Cargo.toml"));
    for m in manifests {
        let text = std::fs::read_to_string(&m).expect("manifest readable");
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{} must have `[lints] workspace = true`",
            m.display()
        );
    }
}

/// The shipped code of the workspace: every `.rs` file under a crate's `src/` (and
/// xtask's), relative to the workspace root, without test directories and without what
/// follows a file's `#[cfg(test)] mod …` (its unit tests come last).
fn shipped_sources() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))
        .expect("crates/ exists")
        .filter_map(Result::ok)
    {
        walk(&entry.path().join("src"), &mut files);
    }
    walk(&root.join("xtask/src"), &mut files);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("source readable");
            let shipped = match text.find("#[cfg(test)]\nmod ") {
                Some(tests) => text[..tests].to_owned(),
                None => text,
            };
            let relative = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            (relative, shipped)
        })
        .collect()
}

/// Fails naming every shipped file outside `allowed` (path prefixes) that contains one of
/// `needles`.
fn only_in(needles: &[&str], allowed: &[&str], why: &str) {
    let offenders: Vec<String> = shipped_sources()
        .into_iter()
        .filter(|(path, _)| !allowed.iter().any(|a| path.starts_with(a)))
        .flat_map(|(path, text)| {
            needles
                .iter()
                .filter(|n| text.contains(**n))
                .map(|n| format!("{path}: `{n}`"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(offenders.is_empty(), "{why}: {offenders:#?}");
}

#[test]
fn shipped_sources_are_found() {
    let sources = shipped_sources();
    for expected in [
        "crates/domain/src/bus.rs",
        "crates/messaging/src/rabbit/topology.rs",
        "xtask/src/main.rs",
    ] {
        assert!(
            sources.iter().any(|(path, _)| path == expected),
            "{expected} is not among the {} shipped sources",
            sources.len()
        );
    }
}

#[test]
fn bus_events_are_coded_only_in_domain() {
    only_in(
        &[
            "DELIVERY_REPORTED_VERSION",
            "SILENCE_CHECK_VERSION",
            "Uuid::new_v5",
        ],
        &["crates/domain/src/"],
        "an event's version and message id are decided by `domain::bus::BusEvent` alone",
    );
}

#[test]
fn the_raw_destination_is_exposed_only_to_twilio_and_encryption() {
    only_in(
        &[".expose()"],
        &["crates/domain/src/", "crates/twilio/src/"],
        "`Destination::expose` is for the Twilio request and the keyring only",
    );
}

#[test]
fn rabbitmq_names_are_declared_only_in_the_topology() {
    only_in(
        &[
            "queue_declare",
            "exchange_declare",
            "queue_bind",
            "x-dead-letter",
            "x-message-ttl",
        ],
        &["crates/messaging/src/rabbit/topology.rs"],
        "exchanges, queues and their arguments belong to `messaging/src/rabbit/topology.rs`",
    );
}

#[test]
fn services_hold_the_bus_through_its_facade() {
    only_in(
        &[
            "RabbitBus::connect",
            "InProcessBus::new",
            "MemoryDedupeStore::new",
        ],
        &["crates/messaging/src/"],
        "a service connects and dedupes through `messaging::Bus`, as it opens the store \
         through `storage::Database`",
    );
}
