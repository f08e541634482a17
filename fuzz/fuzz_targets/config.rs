//! `verify_service::config`: a TOML document over the shipped defaults, loaded and
//! validated as `verify-gateway` loads its configuration file (no environment read).

#![no_main]

use domain::Purpose;
use libfuzzer_sys::fuzz_target;
use verify_service::config::{Overrides, TwilioEnv, load_from_str};

fuzz_target!(|data: &[u8]| {
    let Ok(toml) = std::str::from_utf8(data) else {
        return;
    };
    let load = || load_from_str(toml, &Overrides::default(), &TwilioEnv::default());
    let Ok(settings) = load() else {
        return;
    };
    // Loading depends on the text alone. (`callers` is left out: its index is a HashMap,
    // whose Debug order differs between two equal maps.)
    let again = load().expect("a configuration that loaded once loads again");
    let summary = |s: &verify_service::config::Settings| {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            s.grpc_addr,
            s.server_limits,
            s.database_url,
            s.retention,
            s.policies,
            s.twilio,
            s.fraud,
            s.callers.is_some()
        )
    };
    assert_eq!(summary(&settings), summary(&again));
    // Each configured purpose is found by its name.
    let names: Vec<&str> = settings.policies.names().collect();
    assert!(!names.is_empty());
    for name in names {
        let purpose = Purpose::parse(name).expect("a configured purpose has a valid name");
        let policy = settings.policies.get(&purpose).expect("found by its name");
        assert_eq!(policy.purpose().as_str(), name);
    }
    let _ = settings.open_to_anyone();
});
