//! Every request body ferry accepts, at every version it accepts: the first two
//! bytes pick the API (an index into `dispatch::SUPPORTED`, plus ApiVersions), the
//! next two the version within its range, the rest is the body, decoded through
//! `dispatch::decode_request`, the decoders `dispatch::handle` uses.
#![no_main]

use bytes::Bytes;
use ferry_kafka::dispatch::{decode_request, SUPPORTED};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let pick = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let (api_key, min, max) = match SUPPORTED.get(pick % (SUPPORTED.len() + 1)) {
        Some(entry) => *entry,
        None => {
            let range = ApiKey::ApiVersions.valid_versions();
            (ApiKey::ApiVersions, range.min, range.max)
        }
    };
    let span = (max - min + 1) as u16;
    let version = min + (u16::from_be_bytes([data[2], data[3]]) % span) as i16;
    let mut body = Bytes::copy_from_slice(&data[4..]);
    let _ = decode_request(api_key, version, &mut body);
});
