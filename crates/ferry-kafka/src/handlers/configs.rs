//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs on topics (resource
//! type 2) and on brokers (type 4), under Kafka's config names. A broker resource
//! is either "" (the cluster-wide default) or this node's id (this broker only).
//!
//! ```text
//!  broker config value: this broker's dynamic value ─► cluster-wide dynamic
//!                       value ─► static value ─► default
//!  topic config value:  topic override ─► broker setting it is named after
//!                       (as above) ─► default
//! ```
//!
//! DescribeConfigs reports that chain as the synonyms of a topic config. The
//! checks that come before any change (duplicate resources or keys, null values,
//! which broker a resource names) follow Kafka's `ConfigAdminManager.preprocess`;
//! the change itself is one ferry-core call per resource, so a resource's changes
//! apply together or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_core::broker::BrokerConfigScope;
use ferry_core::config::{
    broker_config_def, topic_config_def, BrokerConfig, ConfigDef, ConfigSource, ConfigType,
    BROKER_CONFIGS, TOPIC_CONFIGS,
};
use ferry_core::{Broker, ConfigChange, CoreError};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{alter_configs_response, incremental_alter_configs_response};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::kafka_error;

/// Kafka's `ConfigResource.Type` id of a topic.
pub const RESOURCE_TOPIC: i8 = 2;
/// Kafka's `ConfigResource.Type` id of a broker.
pub const RESOURCE_BROKER: i8 = 4;

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType`).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Why one resource failed: the code and the message its result carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourceError {
    code: i16,
    message: String,
}

impl ResourceError {
    fn new(error: ResponseError, message: impl Into<String>) -> ResourceError {
        ResourceError {
            code: error.code(),
            message: message.into(),
        }
    }

    fn invalid_request(message: impl Into<String>) -> ResourceError {
        ResourceError::new(ResponseError::InvalidRequest, message)
    }
}

impl From<CoreError> for ResourceError {
    fn from(e: CoreError) -> ResourceError {
        ResourceError::new(kafka_error(&e), e.to_string())
    }
}

/// One config as a client sees it: the effective value, where it came from, and
/// (for synonyms) every place that sets it, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
    pub synonyms: Vec<(String, String, ConfigSource)>,
    pub config_type: ConfigType,
    pub doc: &'static str,
}

/// Every topic config with its effective value given the topic's overrides.
pub(crate) fn topic_config_entries(
    config: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<ConfigEntry> {
    TOPIC_CONFIGS
        .iter()
        .map(|(name, broker_name, def)| {
            let (value, source) = config
                .topic_value(overrides, name)
                .unwrap_or_else(|| (def.default.to_string(), ConfigSource::DefaultConfig));
            let mut synonyms = Vec::new();
            if let Some(v) = overrides.get(*name) {
                synonyms.push((name.to_string(), v.clone(), ConfigSource::TopicConfig));
            }
            synonyms.extend(broker_synonyms(config, broker_name));
            if !synonyms
                .iter()
                .any(|(_, _, s)| *s == ConfigSource::DefaultConfig)
            {
                synonyms.push((
                    name.to_string(),
                    def.default.to_string(),
                    ConfigSource::DefaultConfig,
                ));
            }
            ConfigEntry {
                name,
                value,
                source,
                synonyms,
                config_type: def.config_type,
                doc: def.doc,
            }
        })
        .collect()
}

/// Where a broker setting is set, most specific first: this broker's dynamic
/// value, the cluster-wide dynamic one, the static one, and its default.
fn broker_synonyms(config: &BrokerConfig, name: &str) -> Vec<(String, String, ConfigSource)> {
    config
        .synonyms(name)
        .into_iter()
        .map(|(value, source)| (name.to_string(), value, source))
        .collect()
}

fn broker_config_entry(config: &BrokerConfig, def: &'static ConfigDef) -> ConfigEntry {
    let (value, source) = config
        .get(def.name)
        .unwrap_or_else(|| (def.default.to_string(), ConfigSource::DefaultConfig));
    ConfigEntry {
        name: def.name,
        value,
        source,
        synonyms: broker_synonyms(config, def.name),
        config_type: def.config_type,
        doc: def.doc,
    }
}

/// Which broker resource a request names: `""` is the cluster-wide default, a
/// number must be this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerResource {
    ClusterDefault,
    ThisNode,
}

fn broker_resource(
    name: &str,
    node_id: i32,
    describing: bool,
) -> Result<BrokerResource, ResourceError> {
    if name.is_empty() {
        return Ok(BrokerResource::ClusterDefault);
    }
    let Ok(id) = name.parse::<i32>() else {
        let what = if describing { "Broker" } else { "Node" };
        return Err(ResourceError::invalid_request(format!(
            "{what} id must be an integer, but it is: {name}"
        )));
    };
    if id != node_id {
        let expected = if describing {
            format!("{node_id} or empty string")
        } else {
            node_id.to_string()
        };
        return Err(ResourceError::invalid_request(format!(
            "Unexpected broker id, expected {expected}, but received {name}"
        )));
    }
    Ok(BrokerResource::ThisNode)
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

// ---------------------------------------------------------------------------
// DescribeConfigs
// ---------------------------------------------------------------------------

pub async fn describe(
    ctx: &RequestContext,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let broker = &ctx.broker;
    let config = broker.config();
    let include_documentation = version >= 3 && req.include_documentation;
    let results = req
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_error_message(None)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe_resource(broker, &config, &resource) {
                Ok(entries) => {
                    // Null or empty keys: every config (Kafka's ConfigHelper does the same).
                    let wanted: Option<HashSet<&str>> = resource
                        .configuration_keys
                        .as_ref()
                        .filter(|k| !k.is_empty())
                        .map(|k| k.iter().map(|s| s.as_str()).collect());
                    let configs = entries
                        .into_iter()
                        .filter(|e| wanted.as_ref().is_none_or(|w| w.contains(e.name)))
                        .map(|e| {
                            describe_entry(e, version, req.include_synonyms, include_documentation)
                        })
                        .collect();
                    result.with_configs(configs)
                }
                Err(e) => result
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_resource(
    broker: &Broker,
    config: &BrokerConfig,
    resource: &DescribeConfigsResource,
) -> Result<Vec<ConfigEntry>, ResourceError> {
    let name = resource.resource_name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => {
            ferry_core::broker::validate_topic_name(name)?;
            let image = broker.image();
            let topic = image.topic(name).ok_or_else(|| {
                ResourceError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("Topic {name} does not exist"),
                )
            })?;
            Ok(topic_config_entries(config, &topic.configs))
        }
        RESOURCE_BROKER => match broker_resource(name, broker.node_id(), true)? {
            // The cluster-wide resource shows only what was set dynamically for every
            // broker, as Kafka's does: this node's own values are no part of it.
            BrokerResource::ClusterDefault => {
                let cluster = BrokerConfig {
                    node_configs: BTreeMap::new(),
                    ..config.clone()
                };
                Ok(BROKER_CONFIGS
                    .iter()
                    .filter(|d| cluster.dynamic_configs.contains_key(d.name))
                    .map(|d| broker_config_entry(&cluster, d))
                    .collect())
            }
            BrokerResource::ThisNode => Ok(BROKER_CONFIGS
                .iter()
                .map(|d| broker_config_entry(config, d))
                .collect()),
        },
        other => Err(ResourceError::invalid_request(format!(
            "Unsupported resource type: {other}"
        ))),
    }
}

fn describe_entry(
    e: ConfigEntry,
    version: i16,
    include_synonyms: bool,
    include_documentation: bool,
) -> DescribeConfigsResourceResult {
    let synonyms = if include_synonyms {
        e.synonyms
            .into_iter()
            .map(|(name, value, source)| {
                DescribeConfigsSynonym::default()
                    .with_name(str_bytes(name))
                    .with_value(Some(str_bytes(value)))
                    .with_source(source as i8)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(str_bytes(e.value)))
        .with_read_only(false)
        .with_config_source(e.source as i8)
        .with_is_sensitive(false)
        .with_synonyms(synonyms)
        .with_documentation(None);
    if version >= 3 {
        result.config_type = e.config_type.kafka_id();
        if include_documentation {
            result.documentation = Some(StrBytes::from_static_str(e.doc));
        }
    }
    result
}

// ---------------------------------------------------------------------------
// AlterConfigs and IncrementalAlterConfigs
// ---------------------------------------------------------------------------

/// One resource of either alter request, reduced to what both share.
struct AlterTarget {
    resource_type: i8,
    resource_name: StrBytes,
    /// The changes, or why the request's shape refuses them before any lookup.
    changes: Result<Vec<ConfigChange>, ResourceError>,
}

/// AlterConfigs: the given configs replace every override of the resource.
pub async fn alter(
    ctx: &RequestContext,
    _version: i16,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let targets = req
        .resources
        .into_iter()
        .map(|r| {
            let changes = check_keys(
                r.configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.is_none())),
            )
            .map(|()| {
                r.configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| ConfigChange::Set(c.name.to_string(), v.to_string()))
                    })
                    .collect()
            });
            AlterTarget {
                resource_type: r.resource_type,
                resource_name: r.resource_name,
                changes,
            }
        })
        .collect();
    let outcomes = apply_all(ctx, targets, false, req.validate_only).await;
    let responses = outcomes
        .into_iter()
        .map(|(resource_type, resource_name, outcome)| {
            let r = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name);
            match outcome {
                Ok(()) => r.with_error_message(None),
                Err(e) => r
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on single configs.
pub async fn incremental_alter(
    ctx: &RequestContext,
    _version: i16,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let targets = req
        .resources
        .into_iter()
        .map(|r| {
            let keys = r.configs.iter().map(|c| {
                (
                    c.name.as_str(),
                    c.value.is_none() && c.config_operation != OP_DELETE,
                )
            });
            let changes = check_keys(keys).and_then(|()| {
                r.configs
                    .iter()
                    .map(|c| {
                        incremental_change(
                            r.resource_type,
                            c.name.as_str(),
                            c.config_operation,
                            c.value.as_ref().map(|v| v.as_str()),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            });
            AlterTarget {
                resource_type: r.resource_type,
                resource_name: r.resource_name,
                changes,
            }
        })
        .collect();
    let outcomes = apply_all(ctx, targets, true, req.validate_only).await;
    let responses = outcomes
        .into_iter()
        .map(|(resource_type, resource_name, outcome)| {
            let r = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name);
            match outcome {
                Ok(()) => r.with_error_message(None),
                Err(e) => r
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Refuses a key named twice, and null values where a value is needed (the bool).
fn check_keys<'a>(
    configs: impl Iterator<Item = (&'a str, bool)> + Clone,
) -> Result<(), ResourceError> {
    let mut seen = HashSet::new();
    if !configs.clone().all(|(name, _)| seen.insert(name)) {
        return Err(ResourceError::invalid_request(
            "Error due to duplicate config keys",
        ));
    }
    let nulls: Vec<&str> = configs
        .filter(|(_, null)| *null)
        .map(|(name, _)| name)
        .collect();
    if !nulls.is_empty() {
        return Err(ResourceError::invalid_request(format!(
            "Null value not supported for : {}",
            nulls.join(", ")
        )));
    }
    Ok(())
}

fn incremental_change(
    resource_type: i8,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<ConfigChange, ResourceError> {
    let value = value.unwrap_or_default().to_string();
    let op_name = match op {
        OP_SET => return Ok(ConfigChange::Set(name.to_string(), value)),
        OP_DELETE => return Ok(ConfigChange::Delete(name.to_string())),
        OP_APPEND => "APPEND",
        OP_SUBTRACT => "SUBTRACT",
        other => {
            return Err(ResourceError::invalid_request(format!(
                "Unknown operations type {other}"
            )))
        }
    };
    let def = match resource_type {
        RESOURCE_TOPIC => topic_config_def(name).map(|(_, d)| d),
        RESOURCE_BROKER => broker_config_def(name),
        _ => None,
    };
    // An unknown name is refused by ferry-core's validation with its own message.
    if def.is_some_and(|d| d.config_type != ConfigType::List) {
        return Err(ResourceError::new(
            ResponseError::InvalidConfig,
            format!("Can't {op_name} to key {name} because its type is not LIST."),
        ));
    }
    Ok(if op == OP_APPEND {
        ConfigChange::Append(name.to_string(), value)
    } else {
        ConfigChange::Subtract(name.to_string(), value)
    })
}

/// Applies every resource's changes off the runtime threads (each change is an
/// fsync of the metadata log) and returns one outcome per resource, in order.
async fn apply_all(
    ctx: &RequestContext,
    targets: Vec<AlterTarget>,
    incremental: bool,
    validate_only: bool,
) -> Vec<(i8, StrBytes, Result<(), ResourceError>)> {
    let broker = ctx.broker.clone();
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    let work = move || {
        let mut occurrences: HashMap<(i8, String), usize> = HashMap::new();
        for t in &targets {
            *occurrences
                .entry((t.resource_type, t.resource_name.to_string()))
                .or_default() += 1;
        }
        targets
            .into_iter()
            .map(|t| {
                let duplicate = occurrences.get(&(t.resource_type, t.resource_name.to_string())).is_some_and(|n| *n > 1);
                let outcome = if duplicate {
                    Err(ResourceError::invalid_request("Each resource must appear at most once."))
                } else {
                    apply_one(&broker, &t, incremental, validate_only)
                };
                match &outcome {
                    Ok(()) if !validate_only => tracing::info!(
                        %peer, %client_id, resource_type = t.resource_type, resource = %t.resource_name.as_str(), incremental,
                        "altered configs"
                    ),
                    _ => {}
                }
                (t.resource_type, t.resource_name, outcome)
            })
            .collect()
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(outcomes) => outcomes,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn apply_one(
    broker: &Broker,
    target: &AlterTarget,
    incremental: bool,
    validate_only: bool,
) -> Result<(), ResourceError> {
    let name = target.resource_name.as_str();
    let changes = target.changes.clone()?;
    match target.resource_type {
        RESOURCE_TOPIC => {
            if name.is_empty() {
                return Err(ResourceError::invalid_request(
                    "Default topic resources are not allowed.",
                ));
            }
            ferry_core::broker::validate_topic_name(name)?;
            Ok(broker.alter_topic_configs(name, changes, incremental, validate_only)?)
        }
        RESOURCE_BROKER => {
            let scope = match broker_resource(name, broker.node_id(), false)? {
                BrokerResource::ClusterDefault => BrokerConfigScope::ClusterDefault,
                BrokerResource::ThisNode => BrokerConfigScope::ThisNode,
            };
            Ok(broker.alter_broker_configs(scope, changes, incremental, validate_only)?)
        }
        other => Err(ResourceError::invalid_request(format!(
            "Unknown resource type {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{alter_configs_request, incremental_alter_configs_request};

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    fn describe_request(
        resource_type: i8,
        name: &str,
        keys: Option<&[&str]>,
    ) -> DescribeConfigsRequest {
        let resource = DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configuration_keys(keys.map(|k| k.iter().map(|k| s(k)).collect()));
        DescribeConfigsRequest::default().with_resources(vec![resource])
    }

    /// (name, value, source) of every config of the first resource.
    fn described(resp: &DescribeConfigsResponse) -> Vec<(String, Option<String>, i8)> {
        resp.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.value.as_ref().map(|v| v.to_string()),
                    c.config_source,
                )
            })
            .collect()
    }

    fn value_of(resp: &DescribeConfigsResponse, name: &str) -> Option<(String, i8)> {
        described(resp)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, v, s)| v.map(|v| (v, s)))
    }

    fn incremental(
        resource_type: i8,
        name: &str,
        ops: &[(&str, i8, Option<&str>)],
    ) -> incremental_alter_configs_request::AlterConfigsResource {
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s(k))
                            .with_config_operation(*op)
                            .with_value(v.map(s))
                    })
                    .collect(),
            )
    }

    async fn incremental_alter_one(
        ctx: &RequestContext,
        resource: incremental_alter_configs_request::AlterConfigsResource,
        validate_only: bool,
    ) -> (i16, Option<String>) {
        let req = IncrementalAlterConfigsRequest::default()
            .with_resources(vec![resource])
            .with_validate_only(validate_only);
        let resp = incremental_alter(ctx, 1, req).await;
        assert_encodes(&resp, 1);
        let r = &resp.responses[0];
        (
            r.error_code,
            r.error_message.as_ref().map(|m| m.to_string()),
        )
    }

    fn overrides(ctx: &RequestContext, topic: &str) -> BTreeMap<String, String> {
        ctx.broker
            .image()
            .topic(topic)
            .map(|t| t.configs.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn describe_topic_shows_overrides_and_defaults_with_their_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("t", 1, &[("retention.ms", "1000")])]).await;
        let resp = describe(&ctx, 4, describe_request(RESOURCE_TOPIC, "t", None)).await;
        assert_encodes(&resp, 4);
        assert_eq!(resp.results[0].error_code, 0);
        assert_eq!(resp.results[0].configs.len(), TOPIC_CONFIGS.len());
        assert_eq!(
            value_of(&resp, "retention.ms"),
            Some(("1000".into(), ConfigSource::TopicConfig as i8))
        );
        assert_eq!(
            value_of(&resp, "cleanup.policy"),
            Some(("delete".into(), ConfigSource::DefaultConfig as i8))
        );
        let c = &resp.results[0].configs[0];
        assert!(
            !c.read_only && !c.is_sensitive && c.synonyms.is_empty() && c.documentation.is_none()
        );
        let segment = resp.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == "segment.bytes")
            .expect("segment.bytes");
        assert_eq!(segment.config_type, ConfigType::Int.kafka_id());

        // Synonyms: the override, then the broker setting's default; documentation in v3+.
        let mut req = describe_request(RESOURCE_TOPIC, "t", Some(&["retention.ms"]));
        req.include_synonyms = true;
        req.include_documentation = true;
        let resp = describe(&ctx, 3, req).await;
        assert_encodes(&resp, 3);
        let configs = &resp.results[0].configs;
        assert_eq!(configs.len(), 1);
        let synonyms: Vec<(&str, i8)> = configs[0]
            .synonyms
            .iter()
            .map(|s| (s.name.as_str(), s.source))
            .collect();
        assert_eq!(synonyms, vec![("retention.ms", 1), ("log.retention.ms", 5)]);
        assert!(configs[0].documentation.is_some());
    }

    #[tokio::test]
    async fn describe_refuses_unknown_and_invalid_resources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let cases = [
            (
                RESOURCE_TOPIC,
                "missing",
                ResponseError::UnknownTopicOrPartition,
            ),
            (
                RESOURCE_TOPIC,
                "bad/name",
                ResponseError::InvalidTopicException,
            ),
            (RESOURCE_BROKER, "2", ResponseError::InvalidRequest),
            (RESOURCE_BROKER, "one", ResponseError::InvalidRequest),
            (8, "1", ResponseError::InvalidRequest),
        ];
        for (resource_type, name, error) in cases {
            let resp = describe(&ctx, 2, describe_request(resource_type, name, None)).await;
            assert_encodes(&resp, 2);
            let r = &resp.results[0];
            assert_eq!(r.error_code, error.code(), "{resource_type} {name}");
            assert!(r.error_message.is_some() && r.configs.is_empty());
        }
    }

    #[tokio::test]
    async fn broker_configs_by_node_id_and_cluster_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = [("log.retention.ms".to_string(), "5000".to_string())]
            .into_iter()
            .collect();
        let ctx = context_with(dir.path(), configs);
        let resp = describe(&ctx, 1, describe_request(RESOURCE_BROKER, "1", None)).await;
        assert_encodes(&resp, 1);
        assert_eq!(resp.results[0].configs.len(), BROKER_CONFIGS.len());
        assert_eq!(
            value_of(&resp, "log.retention.ms"),
            Some(("5000".into(), ConfigSource::StaticBrokerConfig as i8))
        );
        assert_eq!(
            value_of(&resp, "num.partitions"),
            Some(("1".into(), ConfigSource::DefaultConfig as i8))
        );
        // Nothing set dynamically yet: the cluster-wide resource is empty.
        let resp = describe(&ctx, 1, describe_request(RESOURCE_BROKER, "", None)).await;
        assert_eq!(
            (resp.results[0].error_code, resp.results[0].configs.len()),
            (0, 0)
        );

        // A dynamic broker setting shows up on the broker and in every topic that follows it.
        let (code, _) = incremental_alter_one(
            &ctx,
            incremental(
                RESOURCE_BROKER,
                "",
                &[("log.retention.ms", OP_SET, Some("7000"))],
            ),
            false,
        )
        .await;
        assert_eq!(code, 0);
        let resp = describe(&ctx, 1, describe_request(RESOURCE_BROKER, "", None)).await;
        assert_eq!(
            described(&resp),
            vec![(
                "log.retention.ms".into(),
                Some("7000".into()),
                ConfigSource::DynamicDefaultBrokerConfig as i8
            )]
        );
        create_topics_ok(&ctx, vec![creatable("follows", 1, &[])]).await;
        let mut req = describe_request(RESOURCE_TOPIC, "follows", Some(&["retention.ms"]));
        req.include_synonyms = true;
        let resp = describe(&ctx, 4, req).await;
        assert_eq!(
            value_of(&resp, "retention.ms"),
            Some((
                "7000".into(),
                ConfigSource::DynamicDefaultBrokerConfig as i8
            ))
        );
        let synonyms: Vec<i8> = resp.results[0].configs[0]
            .synonyms
            .iter()
            .map(|s| s.source)
            .collect();
        assert_eq!(synonyms, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn a_brokers_own_setting_overrides_the_cluster_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = [("log.retention.ms".to_string(), "5000".to_string())]
            .into_iter()
            .collect();
        let ctx = context_with(dir.path(), configs);
        let set = |name: &str, value: &str| {
            incremental(
                RESOURCE_BROKER,
                name,
                &[("log.retention.ms", OP_SET, Some(value))],
            )
        };
        let (code, _) = incremental_alter_one(&ctx, set("", "7000"), false).await;
        assert_eq!(code, 0);
        let (code, _) = incremental_alter_one(&ctx, set("1", "9000"), false).await;
        assert_eq!(code, 0);
        let image = ctx.broker.image();
        assert_eq!(
            image
                .broker_configs
                .get("log.retention.ms")
                .map(String::as_str),
            Some("7000")
        );
        assert_eq!(
            image
                .node_configs(1)
                .get("log.retention.ms")
                .map(String::as_str),
            Some("9000")
        );

        // Broker "1": its own value, then every layer under it in order.
        let mut req = describe_request(RESOURCE_BROKER, "1", Some(&["log.retention.ms"]));
        req.include_synonyms = true;
        let resp = describe(&ctx, 4, req).await;
        assert_encodes(&resp, 4);
        assert_eq!(
            value_of(&resp, "log.retention.ms"),
            Some(("9000".into(), ConfigSource::DynamicBrokerConfig as i8))
        );
        let synonyms: Vec<(String, Option<String>, i8)> = resp.results[0].configs[0]
            .synonyms
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.value.as_ref().map(|v| v.to_string()),
                    s.source,
                )
            })
            .collect();
        let synonym = |v: &str, source: ConfigSource| {
            (
                "log.retention.ms".to_string(),
                Some(v.to_string()),
                source as i8,
            )
        };
        assert_eq!(
            synonyms,
            vec![
                synonym("9000", ConfigSource::DynamicBrokerConfig),
                synonym("7000", ConfigSource::DynamicDefaultBrokerConfig),
                synonym("5000", ConfigSource::StaticBrokerConfig),
                synonym("604800000", ConfigSource::DefaultConfig),
            ]
        );
        // The cluster-wide resource shows only the cluster default.
        let resp = describe(&ctx, 4, describe_request(RESOURCE_BROKER, "", None)).await;
        assert_eq!(
            described(&resp),
            vec![(
                "log.retention.ms".into(),
                Some("7000".into()),
                ConfigSource::DynamicDefaultBrokerConfig as i8
            )]
        );
        // Topics on this broker follow its effective value.
        create_topics_ok(&ctx, vec![creatable("follows", 1, &[])]).await;
        let resp = describe(
            &ctx,
            4,
            describe_request(RESOURCE_TOPIC, "follows", Some(&["retention.ms"])),
        )
        .await;
        assert_eq!(
            value_of(&resp, "retention.ms"),
            Some(("9000".into(), ConfigSource::DynamicBrokerConfig as i8))
        );
        let tp = ferry_core::TopicPartition::new("follows", 0);
        let partition = ctx.broker.partition(&tp).expect("partition");
        assert_eq!(partition.config().retention_ms, 9000);

        // AlterConfigs on "1" replaces only this broker's layer; removing its value
        // falls back to the cluster default (and the partition's config follows).
        let req = AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(RESOURCE_BROKER)
                .with_resource_name(s("1")),
        ]);
        let resp = alter(&ctx, 1, req).await;
        assert_eq!(resp.responses[0].error_code, 0);
        let image = ctx.broker.image();
        assert!(image.node_broker_configs.is_empty());
        assert_eq!(image.broker_configs.len(), 1);
        let resp = describe(
            &ctx,
            4,
            describe_request(RESOURCE_BROKER, "1", Some(&["log.retention.ms"])),
        )
        .await;
        assert_eq!(
            value_of(&resp, "log.retention.ms"),
            Some((
                "7000".into(),
                ConfigSource::DynamicDefaultBrokerConfig as i8
            ))
        );
        assert_eq!(partition.config().retention_ms, 7000);
    }

    #[tokio::test]
    async fn alter_configs_replaces_every_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![creatable(
                "t",
                1,
                &[("retention.ms", "1000"), ("segment.bytes", "100000")],
            )],
        )
        .await;
        let resource = |configs: &[(&str, &str)]| {
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(s("t"))
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            alter_configs_request::AlterableConfig::default()
                                .with_name(s(k))
                                .with_value(Some(s(v)))
                        })
                        .collect(),
                )
        };
        let req = AlterConfigsRequest::default()
            .with_resources(vec![resource(&[("cleanup.policy", "compact")])]);
        let resp = alter(&ctx, 0, req.clone().with_validate_only(true)).await;
        assert_eq!(resp.responses[0].error_code, 0);
        assert_eq!(overrides(&ctx, "t").len(), 2);
        let resp = alter(&ctx, 2, req).await;
        assert_encodes(&resp, 2);
        assert_eq!(
            (
                resp.responses[0].error_code,
                resp.responses[0].resource_name.as_str()
            ),
            (0, "t")
        );
        assert_eq!(
            overrides(&ctx, "t"),
            [("cleanup.policy".to_string(), "compact".to_string())]
                .into_iter()
                .collect()
        );
        assert!(
            ctx.broker
                .partition(&ferry_core::TopicPartition::new("t", 0))
                .expect("partition")
                .config()
                .cleanup_compact
        );

        // A bad value refuses the whole resource with INVALID_CONFIG and a message.
        let resp = alter(
            &ctx,
            1,
            AlterConfigsRequest::default()
                .with_resources(vec![resource(&[("retention.ms", "never")])]),
        )
        .await;
        assert_eq!(
            resp.responses[0].error_code,
            ResponseError::InvalidConfig.code()
        );
        assert!(resp.responses[0].error_message.is_some());
        assert_eq!(overrides(&ctx, "t").len(), 1);
        // The same resource twice: both refused.
        let twice =
            AlterConfigsRequest::default().with_resources(vec![resource(&[]), resource(&[])]);
        let resp = alter(&ctx, 1, twice).await;
        assert!(resp
            .responses
            .iter()
            .all(|r| r.error_code == ResponseError::InvalidRequest.code()));
        assert_eq!(resp.responses.len(), 2);
        assert_eq!(overrides(&ctx, "t").len(), 1);
        // A null value is refused in the legacy request.
        let mut null = resource(&[]);
        null.configs.push(
            alter_configs_request::AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_value(None),
        );
        let resp = alter(
            &ctx,
            1,
            AlterConfigsRequest::default().with_resources(vec![null]),
        )
        .await;
        assert_eq!(
            resp.responses[0].error_code,
            ResponseError::InvalidRequest.code()
        );
        let missing = alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s("nope"));
        let resp = alter(
            &ctx,
            1,
            AlterConfigsRequest::default().with_resources(vec![missing]),
        )
        .await;
        assert_eq!(
            resp.responses[0].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
    }

    #[tokio::test]
    async fn incremental_set_delete_append_subtract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("t", 1, &[("retention.ms", "1000")])]).await;
        let policy = |ctx: &RequestContext| overrides(ctx, "t").get("cleanup.policy").cloned();

        // APPEND starts from the effective value (the default "delete").
        let r = incremental_alter_one(
            &ctx,
            incremental(
                RESOURCE_TOPIC,
                "t",
                &[("cleanup.policy", OP_APPEND, Some("compact"))],
            ),
            false,
        )
        .await;
        assert_eq!(r, (0, None));
        assert_eq!(policy(&ctx).as_deref(), Some("delete,compact"));
        let r = incremental_alter_one(
            &ctx,
            incremental(
                RESOURCE_TOPIC,
                "t",
                &[("cleanup.policy", OP_SUBTRACT, Some("delete"))],
            ),
            false,
        )
        .await;
        assert_eq!(r.0, 0);
        assert_eq!(policy(&ctx).as_deref(), Some("compact"));
        // SET and DELETE touch only the named configs.
        let ops = [
            ("segment.bytes", OP_SET, Some("50000")),
            ("retention.ms", OP_DELETE, None),
        ];
        assert_eq!(
            incremental_alter_one(&ctx, incremental(RESOURCE_TOPIC, "t", &ops), false)
                .await
                .0,
            0
        );
        let expected: BTreeMap<String, String> =
            [("cleanup.policy", "compact"), ("segment.bytes", "50000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(overrides(&ctx, "t"), expected);
        // validate_only checks and changes nothing.
        let r = incremental_alter_one(
            &ctx,
            incremental(
                RESOURCE_TOPIC,
                "t",
                &[("segment.bytes", OP_SET, Some("60000"))],
            ),
            true,
        )
        .await;
        assert_eq!(r.0, 0);
        assert_eq!(overrides(&ctx, "t"), expected);
    }

    #[tokio::test]
    async fn incremental_refusals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("t", 1, &[])]).await;
        let invalid_config = ResponseError::InvalidConfig.code();
        let invalid_request = ResponseError::InvalidRequest.code();
        let cases: Vec<(incremental_alter_configs_request::AlterConfigsResource, i16)> = vec![
            (
                incremental(
                    RESOURCE_TOPIC,
                    "t",
                    &[("retention.ms", OP_APPEND, Some("5"))],
                ),
                invalid_config,
            ),
            (
                incremental(RESOURCE_TOPIC, "t", &[("retention.ms", OP_SET, Some("-5"))]),
                invalid_config,
            ),
            (
                incremental(
                    RESOURCE_TOPIC,
                    "t",
                    &[("cleanup.policy", OP_APPEND, Some("shred"))],
                ),
                invalid_config,
            ),
            (
                incremental(
                    RESOURCE_TOPIC,
                    "t",
                    &[("no.such.config", OP_SET, Some("1"))],
                ),
                invalid_config,
            ),
            (
                incremental(RESOURCE_TOPIC, "t", &[("retention.ms", OP_SET, None)]),
                invalid_request,
            ),
            (
                incremental(RESOURCE_TOPIC, "t", &[("retention.ms", 9, Some("1"))]),
                invalid_request,
            ),
            (
                incremental(
                    RESOURCE_TOPIC,
                    "t",
                    &[
                        ("retention.ms", OP_SET, Some("1")),
                        ("retention.ms", OP_DELETE, None),
                    ],
                ),
                invalid_request,
            ),
            (
                incremental(RESOURCE_TOPIC, "", &[("retention.ms", OP_SET, Some("1"))]),
                invalid_request,
            ),
            (
                incremental(
                    RESOURCE_TOPIC,
                    "missing",
                    &[("retention.ms", OP_SET, Some("1"))],
                ),
                ResponseError::UnknownTopicOrPartition.code(),
            ),
            (
                incremental(
                    RESOURCE_BROKER,
                    "2",
                    &[("num.partitions", OP_SET, Some("2"))],
                ),
                invalid_request,
            ),
            (
                incremental(
                    RESOURCE_BROKER,
                    "1",
                    &[("num.partitions", OP_SET, Some("0"))],
                ),
                invalid_config,
            ),
            (
                incremental(8, "1", &[("root", OP_SET, Some("DEBUG"))]),
                invalid_request,
            ),
        ];
        for (resource, code) in cases {
            let label = format!("{resource:?}");
            let (got, message) = incremental_alter_one(&ctx, resource, false).await;
            assert_eq!(got, code, "{label}");
            assert!(message.is_some(), "{label}");
        }
        assert!(overrides(&ctx, "t").is_empty());
        assert!(ctx.broker.image().broker_configs.is_empty());
        assert!(ctx.broker.image().node_broker_configs.is_empty());
    }
}
