//! ferry-core: the broker's domain services, with no wire types.
//!
//! ```text
//!  ferry-kafka (and later ferry-amqp)
//!        │ domain calls: create_topic, produce, read, alter_configs …
//!        ▼
//!  Broker ── metadata log + image (topics, partitions, configs)
//!    ├── GroupCoordinator (consumer groups, committed offsets ── __consumer_offsets)
//!    └── Partition (replica state: leader epoch, high watermark, log start) ── ferry-log
//!          └── ReplicaTracker (while leader: followers' positions, ISR, HW rule)
//! ```
//!
//! Time comes from a [`clock::Clock`]; storage from `ferry-log`. Errors are
//! [`error::CoreError`]; frontends map them to their protocol's codes.

pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod group;
pub mod hw_checkpoint;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producer_state;
pub mod quota;
pub mod replica;
pub mod txn;

pub use broker::{Broker, BrokerOptions, ConfigChange, NewTopic};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::CoreError;
pub use partition::{
    AppendResult, FollowerAppend, FollowerFetchOutcome, Isolation, Partition, TopicPartition,
};
pub use replica::ReplicaTracker;
