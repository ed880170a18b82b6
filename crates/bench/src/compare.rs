//! The summary of `fanout --compare-bare`: every figure of the server as a ratio of the bare
//! server's in the same round, and, over `--rounds`, the median of each figure and of each ratio.
//!
//! A figure only counts as a ratio to the bare server measured in the same sitting, rounds
//! alternated: absolute numbers on a shared machine move by 2x within an hour, and the median of
//! the per-round ratios is robust to one round that caught a compile. The median of the ratios is
//! taken, not the ratio of the medians, so each ratio compares two runs that saw the same machine.

use serde_json::{Map, Value, json};

/// The figures of a round's summary that are compared, by name and JSON pointer.
const FIGURES: [(&str, &str); 17] = [
    ("deliveries_per_sec", "/deliveries_per_sec"),
    ("duration_secs", "/duration_secs"),
    ("sends_per_sec", "/sends_per_sec"),
    ("server_cpu_us_per_delivery", "/server_cpu_us_per_delivery"),
    ("latency_p50_ms", "/latency_ms/p50"),
    ("latency_p90_ms", "/latency_ms/p90"),
    ("latency_p99_ms", "/latency_ms/p99"),
    ("latency_p999_ms", "/latency_ms/p999"),
    ("latency_max_ms", "/latency_ms/max"),
    ("reach_all_p50_ms", "/reach_all_ms/p50"),
    ("reach_all_max_ms", "/reach_all_ms/max"),
    ("rss_per_socket_bytes", "/server_rss_per_socket_bytes"),
    ("rss_start_kib", "/server_rss_kib/start"),
    ("rss_ready_kib", "/server_rss_kib/ready"),
    ("rss_peak_kib", "/server_rss_kib/peak"),
    ("rss_after_kib", "/server_rss_kib/after"),
    ("lost", "/lost"),
];

/// The figures given as `server / bare`. Memory as a whole is not (the bare server keeps no state
/// to compare against, its RSS is there to read beside the server's); memory per socket is, since
/// both hold the same sockets.
const RATIOS: [&str; 11] = [
    "deliveries_per_sec",
    "duration_secs",
    "server_cpu_us_per_delivery",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_p999_ms",
    "latency_max_ms",
    "reach_all_p50_ms",
    "reach_all_max_ms",
    "rss_per_socket_bytes",
];

/// The goals the ratios are read against (docs/performance.md).
pub fn targets() -> Value {
    json!({
        "deliveries_per_sec": ">= 0.9",
        "server_cpu_us_per_delivery": "<= 1.25",
        "latency_p99_ms": "<= 1.3 (at a fixed --rate both keep up with)",
    })
}

/// The compared figures of one round's summary, by name.
fn figures(summary: &Value) -> Map<String, Value> {
    FIGURES
        .iter()
        .filter_map(|&(name, ptr)| Some((name.to_owned(), summary.pointer(ptr)?.clone())))
        .filter(|(_, v)| v.is_number())
        .collect()
}

/// `server / bare` for each ratio figure both have (3 decimals).
pub fn ratios(server: &Value, bare: &Value) -> Value {
    let (s, b) = (figures(server), figures(bare));
    let out: Map<String, Value> = RATIOS
        .iter()
        .filter_map(|&name| {
            let s = s.get(name)?.as_f64()?;
            let b = b.get(name)?.as_f64()?;
            (b > 0.0).then(|| (name.to_owned(), json!((s / b * 1000.0).round() / 1000.0)))
        })
        .collect();
    Value::Object(out)
}

/// The median (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

/// Per name, the median over `maps` of the values each has for it.
fn medians<'a>(maps: impl IntoIterator<Item = &'a Map<String, Value>> + Clone) -> Value {
    let mut names: Vec<&String> = maps.clone().into_iter().flat_map(Map::keys).collect();
    names.sort();
    names.dedup();
    let out: Map<String, Value> = names
        .into_iter()
        .filter_map(|name| {
            let xs = maps
                .clone()
                .into_iter()
                .filter_map(|m| m.get(name)?.as_f64())
                .collect();
            Some((name.clone(), json!((median(xs)? * 1000.0).round() / 1000.0)))
        })
        .collect();
    Value::Object(out)
}

/// One alternated round: both summaries and the ratios between them.
pub fn round_entry(round: usize, bare: Value, server: Value) -> Value {
    let r = ratios(&server, &bare);
    json!({"round": round, "bare": bare, "server": server, "server_to_bare": r})
}

/// The median of each figure of each side, and of each ratio, over the rounds.
pub fn median_of(rounds: &[Value]) -> Value {
    let side = |key: &str| -> Vec<Map<String, Value>> {
        rounds.iter().map(|r| figures(&r[key])).collect()
    };
    let ratios: Vec<Map<String, Value>> = rounds
        .iter()
        .filter_map(|r| r["server_to_bare"].as_object().cloned())
        .collect();
    json!({
        "rounds": rounds.len(),
        "bare": medians(&side("bare")),
        "server": medians(&side("server")),
        "server_to_bare": medians(&ratios),
    })
}

fn fmt_ratio(r: &Value, name: &str) -> String {
    r.get(name)
        .and_then(Value::as_f64)
        .map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
}

fn fmt_mb(v: &Value, key: &str) -> String {
    v.pointer(&format!("/server_rss_kib/{key}"))
        .and_then(Value::as_f64)
        .map_or_else(|| "n/a".into(), |k| format!("{:.0}", k / 1024.0))
}

/// The ratios on one line, for the person watching (`label`: "round 2/3", "median").
pub fn print_ratios(label: &str, ratios: &Value) {
    eprintln!(
        "{label}: server / bare: deliveries/s {} (target >= 0.9x), server CPU per delivery {} \
         (target <= 1.25x), latency p50 {}, p90 {}, p99 {}, max {}, time to reach a room p50 {}, \
         max {}",
        fmt_ratio(ratios, "deliveries_per_sec"),
        fmt_ratio(ratios, "server_cpu_us_per_delivery"),
        fmt_ratio(ratios, "latency_p50_ms"),
        fmt_ratio(ratios, "latency_p90_ms"),
        fmt_ratio(ratios, "latency_p99_ms"),
        fmt_ratio(ratios, "latency_max_ms"),
        fmt_ratio(ratios, "reach_all_p50_ms"),
        fmt_ratio(ratios, "reach_all_max_ms"),
    );
}

/// Both servers' memory in one round, in MB.
pub fn print_rss(label: &str, entry: &Value) {
    for name in ["bare", "server"] {
        let v = &entry[name];
        eprintln!(
            "{label}: {name} RSS MB: start {}, ready {}, peak {}, after {}",
            fmt_mb(v, "start"),
            fmt_mb(v, "ready"),
            fmt_mb(v, "peak"),
            fmt_mb(v, "after")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(dps: f64, p99: f64, peak: u64) -> Value {
        json!({
            "deliveries_per_sec": dps,
            "latency_ms": {"p50": 1.0, "p99": p99},
            "server_rss_kib": {"peak": peak},
            "lost": 0,
        })
    }

    #[test]
    fn each_round_has_its_ratios_and_the_medians_take_the_middle_round() {
        let rounds = vec![
            round_entry(1, summary(100.0, 10.0, 1000), summary(90.0, 20.0, 9000)),
            round_entry(2, summary(300.0, 10.0, 1100), summary(150.0, 11.0, 7000)),
            round_entry(3, summary(120.0, 8.0, 1200), summary(84.0, 16.0, 8000)),
        ];
        assert_eq!(rounds[0]["server_to_bare"]["deliveries_per_sec"], 0.9);
        assert_eq!(rounds[1]["server_to_bare"]["latency_p99_ms"], 1.1);
        let m = median_of(&rounds);
        assert_eq!(m["rounds"], 3);
        assert_eq!(m["bare"]["deliveries_per_sec"], 120.0);
        assert_eq!(m["server"]["deliveries_per_sec"], 90.0);
        assert_eq!(m["server"]["rss_peak_kib"], 8000.0);
        assert_eq!(m["server"]["lost"], 0.0);
        // Ratios 0.9, 0.5, 0.7: the median ratio, not the ratio of the medians (0.75).
        assert_eq!(m["server_to_bare"]["deliveries_per_sec"], 0.7);
        // p99 ratios 2.0, 1.1, 2.0.
        assert_eq!(m["server_to_bare"]["latency_p99_ms"], 2.0);
        assert!(m["server_to_bare"].get("rss_peak_kib").is_none());
    }

    #[test]
    fn an_even_count_takes_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
