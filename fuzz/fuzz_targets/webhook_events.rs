//! `twilio::events`: the Verify Events body (a JSON array of CloudEvents) and the Messaging
//! status callback's form fields, both read from the same input.

#![no_main]

use chrono::{DateTime, Utc};
use domain::delivery::DeliveryReport;
use libfuzzer_sys::fuzz_target;
use twilio::events::{parse_message_status, parse_verify_events};

fn received_at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

/// What every report holds, whichever body it came from.
fn check_report(report: &DeliveryReport) {
    assert!(report.status.is_final(), "{report:?}");
    assert_ne!(report.error_code, Some(0), "{report:?}");
    for sid in [&report.provider_sid, &report.message_sid]
        .into_iter()
        .flatten()
    {
        assert!(!sid.is_empty() && sid.trim() == sid, "{report:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = parse_verify_events(data, received_at()) {
        // Every event of the array is a report or counted as skipped.
        // (Elements read as `IgnoredAny`, as the events' unknown fields are: a `Value`
        // refuses numbers past f64's range that skipping accepts.)
        let array: Vec<serde::de::IgnoredAny> =
            serde_json::from_slice(data).expect("a body read as events is a JSON array");
        assert_eq!(events.reports.len() + events.skipped, array.len());
        for report in &events.reports {
            check_report(report);
            let id = report
                .dedupe_key
                .strip_prefix("ce:")
                .expect("a CloudEvent key");
            assert!(!id.is_empty() && id.trim() == id, "{report:?}");
        }
    }

    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return;
    };
    if let Ok(Some(report)) = parse_message_status(&params, received_at()) {
        check_report(&report);
        let sid = report
            .message_sid
            .as_deref()
            .expect("a callback names its message");
        assert!(
            sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{sid:?}"
        );
        assert_eq!(report.dedupe_key, format!("ms:{sid}:{}", report.status));
        assert_eq!(report.provider_sid, None);
        assert_eq!(report.occurred_at, received_at());
    }
});
