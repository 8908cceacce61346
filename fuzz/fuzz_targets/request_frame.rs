//! Request framing and headers: the bytes a client sends on a connection are cut
//! into length-prefixed frames (with the size limit and the memory budget) and
//! each frame's request header is parsed, as the connection reader does.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::sync::Semaphore;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let memory = Arc::new(Semaphore::new(1 << 20));
    runtime().block_on(async {
        let mut reader = data;
        // Each frame consumes at least 14 bytes, so this ends.
        for _ in 0..data.len() {
            match ferry_kafka::frame::read_frame(&mut reader, 64 * 1024, &memory).await {
                Ok(Some((frame, _permit))) => {
                    let mut body: Bytes = frame.freeze();
                    let _ = ferry_kafka::frame::parse_header(&mut body);
                }
                Ok(None) | Err(_) => break,
            }
        }
    });
    // Whatever happened, every byte of the budget came back.
    assert_eq!(memory.available_permits(), 1 << 20);
    // And a header parsed straight from the bytes, with no length prefix.
    let _ = ferry_kafka::frame::parse_header(&mut Bytes::copy_from_slice(data));
});
