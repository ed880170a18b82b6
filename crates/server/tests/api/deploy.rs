//! The files under `deploy/` match what runs: the dashboard queries only metrics a live cluster
//! exports, and Prometheus scrapes every port `scripts/cluster.sh` starts.

use std::collections::BTreeSet;

use testkit::{Cluster, Service};

use crate::layout::{read, repo, rust_files};

/// Every `ruststacker_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ruststacker_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard (panels, nested rows, template variables).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &testkit::Value, out: &mut Vec<String>) {
        match v {
            testkit::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query", testkit::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            testkit::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let dashboard: testkit::Value =
        testkit::serde_json::from_str(&read("deploy/grafana/ruststacker.json"))
            .expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

#[test]
fn every_metric_the_code_emits_is_in_docs_metrics() {
    let documented = metric_names(&read("docs/metrics.md"));
    let mut files = Vec::new();
    for krate in std::fs::read_dir(repo("crates")).expect("crates/") {
        let src = krate.expect("a crate").path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    // A metric is named by a whole string literal (`metrics::counter!("ruststacker_...")`);
    // names in comments, like `ruststacker_db_call_*`, are not emitted.
    let mut emitted = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"ruststacker_") {
            let tail = &rest[at + 1..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if tail[end..].starts_with('"') {
                emitted.insert((tail[..end].to_owned(), file.clone()));
            }
            rest = &tail[end..];
        }
    }
    assert!(emitted.len() >= 40, "found only {emitted:?}");
    let missing: Vec<_> = emitted
        .iter()
        .filter(|(name, _)| !documented.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "emitted but not listed in docs/metrics.md: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_in_a_live_cluster() {
    let wanted: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(wanted.len() >= 20, "the dashboard queries {wanted:?}");
    let documented = metric_names(&read("docs/metrics.md"));
    for name in &wanted {
        let base = name
            .strip_suffix("_bucket")
            .unwrap_or(name.as_str())
            .to_owned();
        assert!(
            documented.contains(&base),
            "{name} is on the dashboard but not in docs/metrics.md"
        );
    }

    // A cluster with some traffic: users on both gateways, messages through both Send
    // instances, a membership change through the write-back cache.
    let mut c = Cluster::spawn().await;
    let (api1, api2) = (c.api(0, 0), c.api(1, 1));
    let users = api1.register_users(&["dash-a", "dash-b", "dash-c"]).await;
    let (a, b, cc) = (&users[0], &users[1], &users[2]);
    let room = api1.create_group_ok(a, "dashboard", &[b]).await.room_id;
    api1.add_members(&a.token, room, &[cc.id])
        .await
        .assert_success();
    let mut on_one = c.ws(0, a).await;
    let mut on_two = c.ws(1, b).await;
    api1.send_ok(a, room, "through send 1").await;
    api2.send_ok(b, room, "through send 2").await;
    for ws in [&mut on_one, &mut on_two] {
        ws.new_chats(2).await.expect("both messages arrive");
    }
    api1.get(Service::Meta, "/api/no/such/route", None).await;

    // A graceful stop of Meta flushes the write-back cache, so by the time it returns a flush
    // has been timed (by the periodic flusher before, or by the stop's own flush of the change).
    c.restart_meta().await;
    // One process: every instance's metrics are in each /metrics.
    let text = c.api(0, 0).get(Service::Send, "/metrics", None).await.text;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    c.shutdown().await;
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no live /metrics has: {missing:?}"
    );
}

/// The write-back flush's series are on Meta's /metrics from the start, before any group change:
/// a dashboard's rate of them then has a point before the first flush, and shows that flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_back_flush_series_exist_before_the_first_flush() {
    let c = Cluster::spawn().await;
    let text = c.api(0, 0).get(Service::Meta, "/metrics", None).await.text;
    c.shutdown().await;
    for series in [
        "ruststacker_writeback_flush_duration_seconds_count 0",
        "ruststacker_writeback_rooms_flushed_total 0",
        "ruststacker_writeback_flush_failures_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series:?} not on /metrics:\n{}",
            text.lines()
                .filter(|l| l.contains("writeback"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn prometheus_scrapes_every_port_of_the_local_cluster() {
    let script = read("scripts/cluster.sh");
    let services = script
        .lines()
        .find(|l| l.starts_with("SERVICES=("))
        .map(|first| {
            let start = script.find(first).expect("found");
            let end = script[start..].find(')').expect("closing paren") + start;
            script[start..end].to_owned()
        })
        .expect("scripts/cluster.sh lists its SERVICES");
    let mut ports: Vec<String> = services
        .split('"')
        .filter_map(|s| s.split_whitespace().nth(2))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        ports.len(),
        4,
        "registry, meta and two Send instances: {services}"
    );
    // The gateways, as many as RUSTSTACKER_CLUSTER_GATEWAYS says (by default the two the
    // Prometheus config scrapes), gateway k on 8082 + (k - 1) * 100.
    let gateways: u16 = script
        .lines()
        .find_map(|l| l.strip_prefix("GATEWAYS=${RUSTSTACKER_CLUSTER_GATEWAYS:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .expect("scripts/cluster.sh has a default gateway count");
    assert!(
        script.contains("SERVICES+=(\"gateway-$k gateway $((8082 + (k - 1) * 100))\")"),
        "scripts/cluster.sh places gateway k on 8082 + (k - 1) * 100"
    );
    ports.extend((1..=gateways).map(|k| (8082 + (k - 1) * 100).to_string()));
    assert_eq!(ports.len(), 6, "{services}, {gateways} gateways");
    let prometheus = read("deploy/prometheus/prometheus.yml");
    for port in ports {
        assert!(
            prometheus.contains(&format!("\"127.0.0.1:{port}\"")),
            "deploy/prometheus/prometheus.yml does not scrape :{port}"
        );
    }
}
