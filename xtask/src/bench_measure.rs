//! Measures a benchmark's gateway from outside its process: CPU time and memory from
//! `/proc` (as the shared yardstick's load generator reads them), and the store
//! transactions the gateway counts on its Prometheus endpoint.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context;

/// The counter of committed store transactions, labelled `kind` = `read` or `write`.
const TRANSACTIONS: &str = "verify_store_transactions_total";

/// The CPU time a process has used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    ticks: u64,
}

/// The clock ticks per second `/proc/<pid>/stat` counts in (`getconf CLK_TCK`), asked once
/// per run. Linux has reported 100 on every architecture for years, hence the fallback.
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// utime + stime of `pid`, all its threads included.
pub(crate) fn cpu(pid: u32) -> anyhow::Result<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks =
        ticks_of_stat(&stat).with_context(|| format!("no CPU times in /proc/{pid}/stat"))?;
    Ok(CpuSample { ticks })
}

/// The command name may hold spaces and parentheses, so fields are counted after its last
/// `)`: state is the first there, utime the 12th and stime the 13th (fields 14 and 15 of
/// proc(5)).
fn ticks_of_stat(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU seconds (user and system) a process used from `before` to `after`.
pub(crate) fn cpu_seconds(before: CpuSample, after: CpuSample, ticks_per_second: u64) -> f64 {
    after.ticks.saturating_sub(before.ticks) as f64 / ticks_per_second as f64
}

/// Resident memory now (`VmRSS`) and its peak over the process's life (`VmHWM`), in KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub(crate) fn describe(&self) -> String {
        format!(
            "RSS {:.1} MiB, peak RSS {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Memory {
        rss_kib: kib_of_status(&status, "VmRSS:").context("no VmRSS in /proc/<pid>/status")?,
        peak_kib: kib_of_status(&status, "VmHWM:").context("no VmHWM in /proc/<pid>/status")?,
    })
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`.
fn kib_of_status(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The store transactions counted so far, by kind; empty when the gateway does not expose
/// the counter (or its metrics endpoint did not answer, which is said on stderr).
pub(crate) async fn transactions(
    http: &reqwest::Client,
    metrics_port: u16,
) -> BTreeMap<String, f64> {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = async {
        http.get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    match text.await {
        Ok(text) => parse_transactions(&text),
        Err(e) => {
            eprintln!("scraping {url}: {e}");
            BTreeMap::new()
        }
    }
}

/// Reads the counter's series from the Prometheus (or OpenMetrics) text format, summing
/// over any labels besides `kind`.
fn parse_transactions(text: &str) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    for line in text.lines() {
        let Some((labels, value)) = line
            .strip_prefix(TRANSACTIONS)
            .and_then(|rest| rest.strip_prefix('{'))
            .and_then(|rest| rest.split_once('}'))
        else {
            continue;
        };
        let (Some(kind), Some(value)) = (
            label(labels, "kind"),
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *by_kind.entry(kind.to_owned()).or_insert(0.0) += value;
    }
    by_kind
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        pair.trim()
            .strip_prefix(name)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
    })
}

/// `transactions per flow: …` from two scrapes around `per` flows (or starts).
pub(crate) fn transactions_line(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    per: usize,
    unit: &str,
) -> String {
    if after.is_empty() || per == 0 {
        return format!("transactions per {unit}: n/a (metric not exposed)");
    }
    let per_unit = |kind: &str| {
        let delta =
            after.get(kind).copied().unwrap_or(0.0) - before.get(kind).copied().unwrap_or(0.0);
        delta / per as f64
    };
    format!(
        "transactions per {unit}: {:.2} write, {:.2} read ({TRANSACTIONS})",
        per_unit("write"),
        per_unit("read")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(&str, f64)]) {
        let expected: BTreeMap<String, f64> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        assert_eq!(parse_transactions(text), expected, "{text}");
    }

    #[test]
    fn transactions_are_read_by_kind() {
        check(
            "# HELP verify_store_transactions Store transactions.\n\
             # TYPE verify_store_transactions counter\n\
             verify_store_transactions_total{kind=\"write\"} 120\n\
             verify_store_transactions_total{kind=\"read\"} 45\n\
             verify_store_transactions_created{kind=\"read\"} 1700000000.0\n\
             verify_fraud_decisions_total{decision=\"allow\",country=\"US\",mode=\"enforce\"} 9\n\
             # EOF",
            &[("read", 45.0), ("write", 120.0)],
        );
        check(
            "verify_store_transactions_total{backend=\"sqlite\",kind=\"write\"} 2\n\
             verify_store_transactions_total{backend=\"postgres\",kind=\"write\"} 3.0\n\
             verify_store_transactions_total{kind_of=\"x\"} 7",
            &[("write", 5.0)],
        );
        check("verify_approvals_total{country=\"US\"} 1\n", &[]);
        check("", &[]);
    }

    #[test]
    fn cpu_times_follow_the_last_parenthesis() {
        let stat = "4242 (verify (gw) x) S 1 4242 4242 0 -1 4194560 3000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(ticks_of_stat(stat), Some(325));
        assert_eq!(ticks_of_stat("4242 (gw) S 1"), None);
    }

    #[test]
    fn memory_lines_are_in_kib() {
        let status = "Name:\tverify-gateway\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(kib_of_status(status, "VmRSS:"), Some(40960));
        assert_eq!(kib_of_status(status, "VmHWM:"), Some(51200));
        assert_eq!(kib_of_status(status, "VmSwap:"), None);
    }
}
