//! wire: the BYTES wire format, the one copy the server and the plugin SDK share (the
//! server's protocol crate compiles this file too): each element a 4-byte little-endian
//! length, then that many bytes, as in the Open Inference Protocol's binary extension.

/// Append one element to `data`.
pub fn push(data: &mut Vec<u8>, element: &[u8]) {
    let len = u32::try_from(element.len()).expect("BYTES elements are under 4 GiB");
    data.extend_from_slice(&len.to_le_bytes());
    data.extend_from_slice(element);
}

/// The elements of `data`; none when its length prefixes do not add up to it.
pub fn split(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (element, rest) = rest.split_at_checked(len)?;
        elements.push(element);
        data = rest;
    }
    Some(elements)
}
