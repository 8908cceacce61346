//! One module per Kafka API. Each handler translates the wire request into
//! ferry-core calls and the results into the wire response:
//! `async fn handle(ctx: &RequestContext, version: i16, req: XRequest) -> XResponse`.

pub mod api_versions;
pub mod configs;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
