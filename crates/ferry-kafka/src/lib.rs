//! ferry-kafka: the Kafka wire frontend.
//!
//! ```text
//!  TcpListener ─► connection (frame.rs: length-prefixed frames, size limit)
//!      │   reader: header ─► dispatch ─► handlers/<api>.rs ─► ferry-core calls
//!      │                    (requests of one connection run concurrently…)
//!      └── writer: …but responses leave in request order, as Kafka requires
//! ```
//!
//! Message types come from the `kafka-protocol` crate; this crate owns framing,
//! version negotiation, one handler module per API and the error-code mapping
//! (errors.rs). Stored record batches go into Fetch responses as stored bytes.

pub mod budget;
pub mod connection;
pub mod dispatch;
pub mod errors;
pub mod frame;
pub mod handlers;
pub mod server;

pub use server::{serve, KafkaListenerConfig};
