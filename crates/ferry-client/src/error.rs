//! The client's errors: transport failures, protocol failures and the error codes
//! brokers answer with.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no broker reachable (tried {0})")]
    NoBrokerReachable(String),
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {0} is closed")]
    Closed(String),
    #[error("{what} timed out after {ms} ms")]
    Timeout { what: String, ms: u64 },
    #[error("response frame of {size} bytes from {addr} exceeds the limit of {max}")]
    FrameTooLarge {
        addr: String,
        size: usize,
        max: usize,
    },
    #[error("could not encode {api:?} v{version}: {message}")]
    Encode {
        api: ApiKey,
        version: i16,
        message: String,
    },
    #[error("could not decode the {api:?} v{version} response: {message}")]
    Decode {
        api: ApiKey,
        version: i16,
        message: String,
    },
    #[error("the broker does not support {api:?} (client versions {client_min}..={client_max}, broker {broker})")]
    UnsupportedApi {
        api: ApiKey,
        client_min: i16,
        client_max: i16,
        broker: String,
    },
    #[error("{context}: {error}")]
    Kafka {
        context: String,
        error: ResponseError,
    },
    #[error("unknown broker id {0}")]
    UnknownBroker(i32),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("partition {topic}/{partition} does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("partition {topic}/{partition} has no leader")]
    NoLeader { topic: String, partition: i32 },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A broker error code with what was being done; `None` for code 0.
    pub fn from_code(code: i16, context: impl Into<String>) -> Option<ClientError> {
        if code == 0 {
            return None;
        }
        Some(ClientError::Kafka {
            context: context.into(),
            error: ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code)),
        })
    }

    /// `Err` for a non-zero code.
    pub fn check(code: i16, context: impl FnOnce() -> String) -> Result<(), ClientError> {
        match ClientError::from_code(code, "") {
            None => Ok(()),
            Some(ClientError::Kafka { error, .. }) => Err(ClientError::Kafka {
                context: context(),
                error,
            }),
            Some(other) => Err(other),
        }
    }

    /// The broker's error, if this is one.
    pub fn kafka_error(&self) -> Option<ResponseError> {
        match self {
            ClientError::Kafka { error, .. } => Some(*error),
            _ => None,
        }
    }

    /// Whether retrying after a metadata refresh may help (leadership moved, a
    /// connection dropped, a coordinator is loading).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { error, .. } => error.is_retriable(),
            ClientError::Io { .. } | ClientError::Closed(_) | ClientError::Timeout { .. } => true,
            ClientError::NoLeader { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
