//! ferry-client: a small Kafka client of ferry's own, on the `kafka-protocol` crate.
//!
//! ```text
//!  Client (client.rs): bootstrap, metadata cache, leader / coordinator routing
//!     └── Connection (connection.rs), one per broker:
//!            framing, correlation ids, pipelining, ApiVersions negotiation
//! ```
//!
//! It speaks only standard Kafka APIs and has no opinion about what is sent: a
//! caller builds any `kafka_protocol` request and gets the typed response back
//! (`Connection::send`). The `ferry` CLI uses it; broker-to-broker requests
//! (followers fetching from a leader) can use it as well.

pub mod client;
pub mod connection;
pub mod error;

pub use client::{BrokerInfo, Client, ClientConfig, ClusterMetadata, PartitionInfo, TopicInfo};
pub use connection::{pick_version, ApiVersions, Connection, ConnectionConfig};
pub use error::{ClientError, Result};
pub use kafka_protocol;
