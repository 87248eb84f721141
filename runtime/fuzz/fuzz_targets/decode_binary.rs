//! A request in the binary tensor extension (first byte: the model, see `declared`; the next
//! two: `Inference-Header-Content-Length`, little-endian; 0 is a raw body): decoding never
//! panics, and what it accepts survives a round trip through the binary encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmserve_fuzz::{LIMITS, round_trip, split};

fuzz_target!(|data: &[u8]| {
    let Some((declared, rest)) = split(data) else { return };
    let Some((length, body)) = rest.split_first_chunk::<2>() else { return };
    let header = u16::from_le_bytes(*length).to_string();
    if let Ok(request) = wasmserve_protocol::decode::decode(body, Some(&header), &declared, LIMITS) {
        round_trip(request, &declared, true);
    }
});
