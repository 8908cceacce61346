//! Record batch validation as produce runs it (sizes, magic, CRC-32C, counts), the
//! stored-batch variant, and record decoding including decompression (gzip,
//! snappy, lz4, zstd). A batch the validator accepts must decode or fail cleanly.
#![no_main]

use ferry_log::{batch, record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = batch::validate_batches(data);
    let _ = batch::validate_stored_batches(data);
    for item in batch::batches(data).take(64) {
        let Ok((_, bytes)) = item else { break };
        let _ = record::decode_batch(bytes);
    }
    let _ = record::decode_records(data);
});
