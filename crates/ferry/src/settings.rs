//! `ferry serve` settings: defaults < `--config` TOML file < `FERRY_*` environment
//! < command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use ferry_core::config::{validate_broker_configs, BROKER_CONFIGS};

pub const DEFAULT_DATA_DIR: &str = "./ferry-data";
pub const DEFAULT_KAFKA_ADDR: &str = "127.0.0.1:9092";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

#[derive(Args, Debug, Default)]
#[command(after_long_help = broker_settings_help(), after_help = "Broker settings (Kafka names, --set KEY=VALUE or FERRY_<NAME>): see --help")]
pub struct ServeArgs {
    /// Directory of topics, partitions and metadata [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the Kafka listener [default: 127.0.0.1:9092]
    #[arg(long, env = "FERRY_KAFKA_ADDR")]
    pub kafka_addr: Option<String>,
    /// Address of the HTTP listener (/metrics, /healthz, /readyz) [default: 127.0.0.1:8080]
    #[arg(long, env = "FERRY_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Log filter when RUST_LOG and FERRY_LOG are unset, e.g. info or ferry_kafka=debug [default: info, openraft quieter]
    #[arg(long, env = "FERRY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// HOST:PORT clients are told to connect to [default: the listener's address]
    #[arg(long, env = "FERRY_ADVERTISED_KAFKA_ADDR")]
    pub advertised_kafka_addr: Option<String>,
    /// This broker's node id [default: 1]
    #[arg(long, env = "FERRY_NODE_ID")]
    pub node_id: Option<i32>,
    /// This broker's rack (broker.rack) [default: none]
    #[arg(long, env = "FERRY_BROKER_RACK")]
    pub rack: Option<String>,
    /// The metadata quorum's voters, ID@HOST:PORT,... (Kafka's controller.quorum.voters); unset: a single node [default: none]
    #[arg(long, env = "FERRY_CONTROLLER_VOTERS")]
    pub controller_voters: Option<String>,
    /// Address of this node's controller listener (a voter: its entry in --controller-voters) [default: none]
    #[arg(long, env = "FERRY_CONTROLLER_ADDR")]
    pub controller_addr: Option<String>,
    /// TOML file with any of these settings (keys as the long flags, and a [broker] table of Kafka names)
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// A broker setting under its Kafka name, e.g. --set log.retention.ms=3600000 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

fn broker_settings_help() -> String {
    let mut s = String::from("Broker settings (Kafka names; --set KEY=VALUE, FERRY_<NAME> with dots as underscores, or [broker] in the TOML file):\n");
    for d in BROKER_CONFIGS {
        s.push_str(&format!(
            "  {:<36} default {:<20} {}\n",
            d.name, d.default, d.doc
        ));
    }
    s
}

/// The environment variable for a broker setting: `log.retention.ms` → `FERRY_LOG_RETENTION_MS`.
pub fn env_name(setting: &str) -> String {
    format!("FERRY_{}", setting.replace('.', "_").to_uppercase())
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kafka_addr: String,
    pub http_addr: String,
    pub log_level: Option<String>,
    pub advertised_kafka_addr: Option<String>,
    pub node_id: i32,
    pub rack: Option<String>,
    pub broker_configs: BTreeMap<String, String>,
    /// Voter id → controller address; empty on a single node.
    pub controller_voters: BTreeMap<u64, String>,
    pub controller_addr: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    data_dir: Option<PathBuf>,
    kafka_addr: Option<String>,
    http_addr: Option<String>,
    #[serde(alias = "log_level")]
    log_level: Option<String>,
    advertised_kafka_addr: Option<String>,
    node_id: Option<i32>,
    rack: Option<String>,
    controller_voters: Option<String>,
    controller_addr: Option<String>,
    #[serde(default)]
    broker: BTreeMap<String, toml::Value>,
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileSettings::default(),
        };
        let mut broker_configs = BTreeMap::new();
        for (k, v) in &file.broker {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            broker_configs.insert(k.clone(), v);
        }
        for d in BROKER_CONFIGS {
            if let Ok(v) = std::env::var(env_name(d.name)) {
                broker_configs.insert(d.name.to_string(), v);
            }
        }
        for kv in &args.set {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--set expects KEY=VALUE, got {kv:?}");
            };
            broker_configs.insert(k.trim().to_string(), v.trim().to_string());
        }
        validate_broker_configs(&broker_configs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings = Settings {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            kafka_addr: args
                .kafka_addr
                .clone()
                .or(file.kafka_addr)
                .unwrap_or_else(|| DEFAULT_KAFKA_ADDR.to_string()),
            http_addr: args
                .http_addr
                .clone()
                .or(file.http_addr)
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string()),
            log_level: args.log_level.clone().or(file.log_level),
            advertised_kafka_addr: args
                .advertised_kafka_addr
                .clone()
                .or(file.advertised_kafka_addr),
            node_id: args.node_id.or(file.node_id).unwrap_or(1),
            rack: args.rack.clone().or(file.rack),
            broker_configs,
            controller_voters: parse_voters(
                args.controller_voters
                    .as_deref()
                    .or(file.controller_voters.as_deref())
                    .unwrap_or(""),
            )?,
            controller_addr: args.controller_addr.clone().or(file.controller_addr),
        };
        if !settings.controller_voters.is_empty() {
            match &settings.controller_addr {
                Some(a) => {
                    split_host_port(a)?;
                }
                None if !settings
                    .controller_voters
                    .contains_key(&(settings.node_id as u64)) =>
                {
                    bail!("--controller-addr is needed on a node that is not a voter")
                }
                None => {}
            }
        }
        if let Some(a) = &settings.advertised_kafka_addr {
            split_host_port(a)?;
        }
        if settings.node_id < 0 {
            bail!("node id must not be negative, got {}", settings.node_id);
        }
        Ok(settings)
    }
}

/// `1@host:port,2@host:port` → {1: "host:port", 2: "host:port"}.
pub fn parse_voters(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut voters = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((id, addr)) = entry.split_once('@') else {
            bail!("a controller voter is ID@HOST:PORT, got {entry:?}");
        };
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("voter id in {entry:?}"))?;
        split_host_port(addr)?;
        if voters.insert(id, addr.trim().to_string()).is_some() {
            bail!("voter {id} is listed twice");
        }
    }
    Ok(voters)
}

fn load_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `host:port` → (host, port).
pub fn split_host_port(addr: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{addr:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{addr:?} has no host");
    }
    Ok((host.to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_beats_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "kafka-addr = \"127.0.0.1:9999\"\nnode-id = 3\n[broker]\n\"num.partitions\" = 4\n\"log.retention.ms\" = 1000\n")
            .expect("write");
        let args = ServeArgs {
            config: Some(path),
            set: vec!["log.retention.ms=5".into()],
            ..Default::default()
        };
        let s = Settings::resolve(&args).expect("resolve");
        assert_eq!(s.kafka_addr, "127.0.0.1:9999");
        assert_eq!(s.node_id, 3);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            s.broker_configs.get("num.partitions").map(String::as_str),
            Some("4")
        );
        assert_eq!(
            s.broker_configs.get("log.retention.ms").map(String::as_str),
            Some("5")
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let args = ServeArgs {
            set: vec!["no.such.setting=1".into()],
            ..Default::default()
        };
        assert!(Settings::resolve(&args).is_err());
        let args = ServeArgs {
            set: vec!["num.partitions=zero".into()],
            ..Default::default()
        };
        assert!(Settings::resolve(&args).is_err());
        assert!(split_host_port("localhost").is_err());
        assert_eq!(
            split_host_port("broker:9092").expect("valid"),
            ("broker".to_string(), 9092)
        );
    }
}
