//! The benchmark program runs end to end at a small size and writes every figure it
//! reports (the figures themselves are not judged here: see `make bench`).

use std::process::Command;

#[test]
fn a_small_run_writes_results_json_markdown_and_the_plots() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_lockkeeper-bench"))
        .args(["--out", out.path().to_str().unwrap()])
        .args([
            "--handoffs",
            "20",
            "--warmup",
            "5",
            "--locks",
            "5",
            "--claims-per-lock",
            "4",
            "--scale-locks",
            "10",
            "--scale-claims-per-lock",
            "3",
            "--capacity-seconds",
            "1",
        ])
        .output()
        .expect("the bench runs");
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert!(
        results["kubernetes_version"]
            .as_str()
            .unwrap()
            .starts_with("v1."),
        "{results}"
    );
    for system in [
        "curator",
        "engine",
        "floor",
        "lockkeeper_pod",
        "lockkeeper_gate",
    ] {
        let latency = &results["handoff"][system];
        assert_eq!(latency["count"], 20, "{system}: {latency}");
        assert!(
            latency["p50_ms"].as_f64().unwrap() > 0.0,
            "{system}: {latency}"
        );
    }
    assert!(results["handoff"]["ratios"]["lockkeeper_pod_to_engine"]["p99"].is_number());
    assert!(
        results["handoff"]["ratios"]["pod_p50_over_floor"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        results["handoff"]["ratios"]["pod_p99_over_floor"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The limit is half the API server's status writes per second, and lockkeeper's rate is
    // set against it.
    let throughput = &results["throughput"];
    let capacity = throughput["apiserver_status_writes_per_s"]
        .as_f64()
        .unwrap();
    assert!(capacity > 0.0, "{throughput}");
    assert!(
        (throughput["limit_grants_per_s"].as_f64().unwrap() - capacity / 2.0).abs() < 0.01,
        "{throughput}"
    );
    assert_eq!(
        throughput["operator_grants_per_s"],
        throughput["lockkeeper_grants_per_s"]
    );
    assert!(throughput["ratio_to_limit"].as_f64().unwrap() > 0.0);
    // Writes per claim add up the write requests of the breakdown, and only those.
    let writes = results["api_writes_per_claim"].as_f64().unwrap();
    let by_request = results["api_writes_per_claim_by_request"]
        .as_object()
        .unwrap();
    let sum: f64 = by_request.values().map(|n| n.as_f64().unwrap()).sum();
    assert!((writes - sum).abs() < 0.05, "{writes} {by_request:?}");
    assert!(
        by_request
            .keys()
            .all(|r| !r.starts_with("get ") && !r.starts_with("list "))
    );
    assert!(
        results["throughput"]["lockkeeper_grants_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The controller's API requests, as the proxy in front of the API server counted them: a
    // status write per phase change at least, and no finalizer patch of claims.
    let requests = &results["throughput"]["api_requests_per_claim"];
    assert!(
        requests["patch lockclaims/status"].as_f64().unwrap() >= 2.0,
        "{requests}"
    );
    assert!(requests["patch lockclaims"].is_null(), "{requests}");
    assert!(
        results["throughput"]["controller_memory_after"]["rss_mib"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Scale: one watch per waiter, each on its predecessor; every claim granted once, never
    // before the previous holder of its lock ended, also across the restart.
    let scale = &results["scale"];
    assert_eq!(scale["claims"], 30, "{scale}");
    assert_eq!(scale["watches"]["waiters"], 30, "{scale}");
    assert_eq!(scale["watches"]["controller_on_queues"], 30, "{scale}");
    assert_eq!(
        scale["watches"]["waiters_watching_predecessor"], 30,
        "{scale}"
    );
    assert_eq!(scale["watches"]["directory_watches"], 0, "{scale}");
    assert_eq!(scale["grants_before_previous_holder_ended"], 0, "{scale}");
    assert_eq!(scale["claims_granted_more_than_once"], 0, "{scale}");
    assert_eq!(scale["claims_granted_once"], 30, "{scale}");
    assert_eq!(scale["recovery"]["locks_with_two_holders"], 0, "{scale}");
    assert_eq!(scale["recovery"]["due"], 10, "{scale}");
    assert!(scale["recovery"]["first_grant_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        scale["restart_first_grant_s"],
        scale["recovery"]["first_grant_s"]
    );
    assert!(scale["controller_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(scale["all_waiting_s"].as_f64().unwrap() > 0.0);
    // The cost to the cluster: the claims are in etcd, and one claim has a size.
    let db = |when: &str| scale[when]["etcd_db_bytes"].as_u64().unwrap();
    assert!(db("cluster_before") > 0 && db("cluster_all_waiting") >= db("cluster_before"));
    assert!(
        scale["cluster_all_waiting"]["apiserver_rss_mib"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        scale["claim_object_bytes"].as_u64().unwrap() > 200,
        "{scale}"
    );
    let samples = scale["memory_by_claims"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .all(|s| s["etcd_mib"].as_f64().unwrap() > 0.0)
    );
    let markdown = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        markdown.contains("| lockkeeper gate: pod Succeeded → next gate exits | 20 |"),
        "{markdown}"
    );
    for plot in [
        "handoff-latency.png",
        "memory-by-claims.png",
        "writes-per-claim.png",
    ] {
        let png = std::fs::read(out.path().join(plot)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}");
    }
}
