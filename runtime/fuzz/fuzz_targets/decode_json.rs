//! A JSON inference request (first byte: which model it goes to, see `declared`): decoding
//! never panics, and what it accepts survives a round trip through the JSON encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmserve_fuzz::{LIMITS, round_trip, split};

fuzz_target!(|data: &[u8]| {
    let Some((declared, body)) = split(data) else { return };
    if let Ok(request) = wasmserve_protocol::decode::decode(body, None, &declared, LIMITS) {
        round_trip(request, &declared, false);
    }
});
