//! Dynamic broker configs per broker, as `kafka-configs --entity-type brokers`
//! sets them: a value set for broker N (resource "N") applies to N alone and
//! overrides the cluster-wide default (resource ""), which overrides the
//! broker's static settings. Every broker describes its own view, with the
//! source of each value (Kafka's DYNAMIC_BROKER_CONFIG, DYNAMIC_DEFAULT_BROKER_CONFIG,
//! STATIC_BROKER_CONFIG) and, when asked, every layer under it.

mod cluster_support;
mod reliability;

use std::time::{Duration, Instant};

use cluster_support::*;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, OwnedResourceSpecifier, ResourceSpecifier,
};
use rdkafka::client::DefaultClientContext;
use reliability::*;

const KEY: &str = "log.retention.ms";
const STATIC: &str = "5000";
const RESOURCE_BROKER: i8 = 4;
const INVALID_REQUEST: i16 = 42;
/// Kafka's DescribeConfigs `ConfigSource` ids.
const DYNAMIC_BROKER_CONFIG: i8 = 2;
const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// IncrementalAlterConfigs of `KEY` on broker resource `name` at `addr`: SET
/// to `value`, or DELETE when `None`. Its error code.
fn alter_raw(addr: &str, name: &str, value: Option<&str>) -> i16 {
    let config = AlterableConfig::default()
        .with_name(str_bytes(KEY))
        .with_config_operation(if value.is_some() { 0 } else { 1 })
        .with_value(value.map(str_bytes));
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_BROKER)
            .with_resource_name(str_bytes(name))
            .with_configs(vec![config]),
    ]);
    let response: IncrementalAlterConfigsResponse =
        call(addr, ApiKey::IncrementalAlterConfigs, 1, &request);
    assert_eq!(response.responses.len(), 1, "{response:?}");
    response.responses[0].error_code
}

/// `KEY` of broker resource `name` as the broker at `addr` describes it, with
/// synonyms: (value, source, [(value, source)] of the synonyms).
type Described = (String, i8, Vec<(String, i8)>);

fn describe_raw(addr: &str, name: &str) -> Option<Described> {
    let mut request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_BROKER)
            .with_resource_name(str_bytes(name))
            .with_configuration_keys(Some(vec![str_bytes(KEY)]))]);
    request.include_synonyms = true;
    let response: DescribeConfigsResponse = call(addr, ApiKey::DescribeConfigs, 4, &request);
    let result = response.results.first()?;
    assert_eq!(result.error_code, 0, "{result:?}");
    let entry = result.configs.iter().find(|c| c.name.as_str() == KEY)?;
    let synonyms = entry
        .synonyms
        .iter()
        .map(|s| {
            assert_eq!(s.name.as_str(), KEY);
            (
                s.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                s.source,
            )
        })
        .collect();
    Some((
        entry.value.as_ref()?.to_string(),
        entry.config_source,
        synonyms,
    ))
}

/// Kafka's id of the source rdkafka reports.
fn source_id(source: &ConfigSource) -> i8 {
    match source {
        ConfigSource::DynamicTopic => 1,
        ConfigSource::DynamicBroker => DYNAMIC_BROKER_CONFIG,
        ConfigSource::DynamicDefaultBroker => DYNAMIC_DEFAULT_BROKER_CONFIG,
        ConfigSource::StaticBroker => STATIC_BROKER_CONFIG,
        ConfigSource::Default => DEFAULT_CONFIG,
        _ => 0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `KEY` of every broker as it describes itself (rdkafka's DescribeConfigs on
/// `ResourceSpecifier::Broker(n)`, which goes to broker n; librdkafka takes one
/// broker resource per request).
fn described_by_rdkafka(
    admin: &AdminClient<DefaultClientContext>,
    rt: &tokio::runtime::Runtime,
) -> Vec<(i32, Option<(String, i8)>)> {
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    (1..=3)
        .map(|id| {
            let results = rt
                .block_on(admin.describe_configs([&ResourceSpecifier::Broker(id)], &options))
                .expect("describe_configs");
            let entry = results
                .into_iter()
                .next()
                .and_then(|r| r.ok())
                .and_then(|resource| {
                    resource
                        .get(KEY)
                        .and_then(|e| e.value.clone().map(|v| (v, source_id(&e.source))))
                });
            (id, entry)
        })
        .collect()
}

/// Waits until brokers 1, 2 and 3 describe `KEY` as `want` (each applies the
/// metadata log on its own schedule).
fn wait_described(
    admin: &AdminClient<DefaultClientContext>,
    rt: &tokio::runtime::Runtime,
    want: [(&str, i8); 3],
    what: &str,
) {
    let want: Vec<(i32, Option<(String, i8)>)> = (1..=3)
        .zip(want)
        .map(|(id, (v, s))| (id, Some((v.to_string(), s))))
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = described_by_rdkafka(admin, rt);
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: brokers describe {seen:?}, waited for {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// rdkafka's AlterConfigs (which replaces every dynamic value of the resource)
/// on broker 2 with `entries`.
fn alter_broker_2(
    admin: &AdminClient<DefaultClientContext>,
    rt: &tokio::runtime::Runtime,
    entries: &[(&str, &str)],
) {
    let mut alter = AlterConfig::new(ResourceSpecifier::Broker(2));
    for (k, v) in entries {
        alter = alter.set(k, v);
    }
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = rt
        .block_on(admin.alter_configs([&alter], &options))
        .expect("alter_configs");
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].as_ref().map_err(|(_, e)| *e),
        Ok(&OwnedResourceSpecifier::Broker(2))
    );
}

#[test]
fn a_config_set_for_one_broker_applies_to_it_alone() {
    let cluster = Cluster::start_with(1, &["--set", &format!("{KEY}={STATIC}")]);
    let addr = |id: i32| cluster.nodes[&id].addr.clone();
    let admin: AdminClient<DefaultClientContext> =
        client(&cluster.bootstrap()).create().expect("admin");
    let rt = runtime();

    wait_described(
        &admin,
        &rt,
        [(STATIC, STATIC_BROKER_CONFIG); 3],
        "static settings first",
    );

    // A broker takes changes only for its own id (or the cluster default).
    assert_eq!(alter_raw(&addr(1), "2", Some("1")), INVALID_REQUEST);

    // Broker 2 alone, as `kafka-configs --entity-type brokers --entity-name 2`.
    alter_broker_2(&admin, &rt, &[(KEY, "9000")]);
    wait_described(
        &admin,
        &rt,
        [
            (STATIC, STATIC_BROKER_CONFIG),
            ("9000", DYNAMIC_BROKER_CONFIG),
            (STATIC, STATIC_BROKER_CONFIG),
        ],
        "broker 2's own value",
    );

    // The cluster-wide default: every broker but 2, whose own value wins. Once
    // 1 and 3 show the default they have applied broker 2's record too (it came
    // first in the metadata log), and still do not show it.
    assert_eq!(alter_raw(&addr(3), "", Some("7000")), 0);
    wait_described(
        &admin,
        &rt,
        [
            ("7000", DYNAMIC_DEFAULT_BROKER_CONFIG),
            ("9000", DYNAMIC_BROKER_CONFIG),
            ("7000", DYNAMIC_DEFAULT_BROKER_CONFIG),
        ],
        "the cluster default under broker 2's value",
    );
    // Broker 2 reports every layer, most specific first; "" only the default.
    let wait_default_on_2 = Instant::now() + Duration::from_secs(30);
    while describe_raw(&addr(2), "").map(|d| d.0).as_deref() != Some("7000") {
        assert!(
            Instant::now() < wait_default_on_2,
            "broker 2 sees the default"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        describe_raw(&addr(2), "2"),
        Some((
            "9000".to_string(),
            DYNAMIC_BROKER_CONFIG,
            vec![
                ("9000".to_string(), DYNAMIC_BROKER_CONFIG),
                ("7000".to_string(), DYNAMIC_DEFAULT_BROKER_CONFIG),
                (STATIC.to_string(), STATIC_BROKER_CONFIG),
                ("604800000".to_string(), DEFAULT_CONFIG),
            ]
        ))
    );
    assert_eq!(
        describe_raw(&addr(2), "").map(|d| (d.0, d.1)),
        Some(("7000".to_string(), DYNAMIC_DEFAULT_BROKER_CONFIG))
    );
    assert_eq!(
        describe_raw(&addr(1), "1").map(|d| d.2),
        Some(vec![
            ("7000".to_string(), DYNAMIC_DEFAULT_BROKER_CONFIG),
            (STATIC.to_string(), STATIC_BROKER_CONFIG),
            ("604800000".to_string(), DEFAULT_CONFIG),
        ])
    );

    // Without its own value broker 2 falls back to the cluster default (AlterConfigs
    // with no entries clears the resource).
    alter_broker_2(&admin, &rt, &[]);
    wait_described(
        &admin,
        &rt,
        [("7000", DYNAMIC_DEFAULT_BROKER_CONFIG); 3],
        "broker 2 back on the default",
    );

    // Set again and removed with IncrementalAlterConfigs DELETE, sent to broker 2.
    assert_eq!(alter_raw(&addr(2), "2", Some("8000")), 0);
    wait_described(
        &admin,
        &rt,
        [
            ("7000", DYNAMIC_DEFAULT_BROKER_CONFIG),
            ("8000", DYNAMIC_BROKER_CONFIG),
            ("7000", DYNAMIC_DEFAULT_BROKER_CONFIG),
        ],
        "broker 2's value again",
    );
    assert_eq!(alter_raw(&addr(2), "2", None), 0);
    // Then the default goes too: every broker is back on its static setting.
    assert_eq!(alter_raw(&addr(1), "", None), 0);
    wait_described(
        &admin,
        &rt,
        [(STATIC, STATIC_BROKER_CONFIG); 3],
        "static settings again",
    );
}

/// Runs `ferry ARGS --json` against `bootstrap`, killed after 30 s: its JSON output.
fn ferry_json(bootstrap: &str, args: &[&str]) -> serde_json::Value {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--json")
        .env("FERRY_BROKERS", bootstrap)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry");
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for ferry").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("ferry {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("ferry output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ferry {args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ferry {args:?} printed no JSON ({e}): {stdout}"))
}

#[test]
fn the_cli_sets_and_removes_one_brokers_value() {
    let cluster = Cluster::start_with(1, &["--set", &format!("{KEY}={STATIC}")]);
    let bootstrap = cluster.bootstrap();
    let value_on = |id: i32| {
        let got = ferry_json(
            &bootstrap,
            &["cluster", "config", "get", "--broker", &id.to_string(), KEY],
        );
        assert_eq!(got["broker_id"], id, "{got}");
        got["configs"][KEY].as_str().map(str::to_string)
    };
    let wait_values = |want: [&str; 3], what: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let seen: Vec<Option<String>> = (1..=3).map(value_on).collect();
            if seen.iter().zip(want).all(|(s, w)| s.as_deref() == Some(w)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: {seen:?}, waited for {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let set = ferry_json(
        &bootstrap,
        &[
            "cluster",
            "config",
            "set",
            "--broker",
            "3",
            &format!("{KEY}=6000"),
        ],
    );
    assert_eq!(set["broker_id"], 3, "{set}");
    wait_values([STATIC, STATIC, "6000"], "broker 3's own value");
    ferry_json(
        &bootstrap,
        &["cluster", "config", "set", &format!("{KEY}=4000")],
    );
    wait_values(["4000", "4000", "6000"], "the cluster default under it");
    let deleted = ferry_json(
        &bootstrap,
        &["cluster", "config", "delete", "--broker", "3", KEY],
    );
    assert_eq!(deleted["deleted"][0], KEY, "{deleted}");
    wait_values(["4000", "4000", "4000"], "broker 3 back on the default");
    ferry_json(&bootstrap, &["cluster", "config", "delete", KEY]);
    wait_values([STATIC, STATIC, STATIC], "static settings again");
}
