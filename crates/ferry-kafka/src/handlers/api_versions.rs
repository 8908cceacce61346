//! ApiVersions: what ferry implements, straight from the dispatch table.
//!
//! A client may ask with a version newer than ours (KIP-511): it gets a v0
//! response with UNSUPPORTED_VERSION and our ranges, and retries with one we know.
//! The response carries no tagged fields beyond the empty set, because older
//! librdkafka (2.0.x, Debian's kcat) mis-parses ones it does not expect.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use crate::dispatch::{self, Outcome, RequestContext, SUPPORTED};
use crate::frame;

fn supported_versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

pub fn handle(ctx: &RequestContext, version: i16, correlation_id: i32, mut body: Bytes) -> Outcome {
    let (min, max) = dispatch::supported(ApiKey::ApiVersions).unwrap_or((0, 0));
    if version < min || version > max {
        let resp = ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(supported_versions());
        return encode(0, correlation_id, &resp);
    }
    let req: ApiVersionsRequest = match frame::decode_body(&mut body, version) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, error = %e, "malformed ApiVersions request");
            let resp = ApiVersionsResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_api_keys(supported_versions());
            return encode(version, correlation_id, &resp);
        }
    };
    if version >= 3 {
        tracing::debug!(
            peer = %ctx.peer, client = %req.client_software_name.as_str(), client_version = %req.client_software_version.as_str(),
            "client connected"
        );
    }
    let resp = ApiVersionsResponse::default().with_api_keys(supported_versions());
    encode(version, correlation_id, &resp)
}

fn encode(version: i16, correlation_id: i32, resp: &ApiVersionsResponse) -> Outcome {
    match frame::encode_response(ApiKey::ApiVersions, version, correlation_id, resp) {
        Ok(b) => Outcome::Respond(b),
        Err(e) => {
            tracing::error!(error = %e, "could not encode ApiVersions");
            Outcome::Close
        }
    }
}
