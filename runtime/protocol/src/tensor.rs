//! Tensors as every step of the request path sees them: OIP datatypes, row-major
//! little-endian data, BYTES elements each prefixed by a 4-byte little-endian length.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// An Open Inference Protocol datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    /// Bytes per element; `None` for BYTES, whose elements vary in size.
    pub fn size(self) -> Option<usize> {
        use Datatype::*;
        Some(match self {
            Bool | Uint8 | Int8 => 1,
            Uint16 | Int16 | Fp16 | Bf16 => 2,
            Uint32 | Int32 | Fp32 => 4,
            Uint64 | Int64 | Fp64 => 8,
            Bytes => return None,
        })
    }

    /// The protocol's name for it, e.g. `FP32`.
    pub fn name(self) -> &'static str {
        use Datatype::*;
        match self {
            Bool => "BOOL",
            Uint8 => "UINT8",
            Uint16 => "UINT16",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Int8 => "INT8",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            Fp16 => "FP16",
            Bf16 => "BF16",
            Fp32 => "FP32",
            Fp64 => "FP64",
            Bytes => "BYTES",
        }
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A named tensor with its data in wire layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: Datatype,
    /// Dimensions, each >= 0.
    pub shape: Vec<i64>,
    /// Row-major little-endian elements (BYTES: length-prefixed elements).
    pub data: Vec<u8>,
}

/// The number of elements a shape holds; errors on negative dimensions or overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |count, &dim| {
        let dim = usize::try_from(dim).map_err(|_| {
            Error::bad_request(format!("tensor '{name}': shape {shape:?} has a negative dimension"))
        })?;
        count.checked_mul(dim).ok_or_else(|| {
            Error::bad_request(format!("tensor '{name}': shape {shape:?} holds too many elements"))
        })
    })
}

/// The BYTES wire format: the plugin SDK's own file, one copy for both.
#[path = "../../../plugins/sdk/src/wire.rs"]
mod wire;

/// Split BYTES data into its elements; errors if the length prefixes do not add up.
pub fn bytes_elements<'a>(name: &str, data: &'a [u8]) -> Result<Vec<&'a [u8]>> {
    wire::split(data).ok_or_else(|| {
        Error::bad_request(format!(
            "tensor '{name}': BYTES data is malformed (each element needs a 4-byte little-endian length, then that many bytes)"
        ))
    })
}

/// Append one BYTES element.
pub fn push_bytes_element(data: &mut Vec<u8>, element: &[u8]) {
    wire::push(data, element)
}

impl Tensor {
    /// Check that shape, datatype and data agree.
    pub fn validate(&self) -> Result<()> {
        let count = element_count(&self.name, &self.shape)?;
        match self.datatype.size() {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| Error::bad_request(format!("tensor '{}' is too large", self.name)))?;
                if self.data.len() != expected {
                    return Err(Error::bad_request(format!(
                        "tensor '{}': shape {:?} of {} needs {expected} bytes of data, got {}",
                        self.name,
                        self.shape,
                        self.datatype,
                        self.data.len()
                    )));
                }
            }
            None => {
                let found = bytes_elements(&self.name, &self.data)?.len();
                if found != count {
                    return Err(Error::bad_request(format!(
                        "tensor '{}': shape {:?} holds {count} elements, got {found}",
                        self.name, self.shape
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_rejects_negative_and_overflowing_shapes() {
        assert_eq!(element_count("x", &[2, 3]).unwrap(), 6);
        assert_eq!(element_count("x", &[]).unwrap(), 1);
        assert!(element_count("x", &[2, -1]).unwrap_err().to_string().contains("negative"));
        let err = element_count("x", &[i64::MAX, i64::MAX]).unwrap_err();
        assert!(err.to_string().contains("too many"), "{err}");
    }

    #[test]
    fn bytes_round_trip_and_malformed_data() {
        let mut data = Vec::new();
        push_bytes_element(&mut data, b"ab");
        push_bytes_element(&mut data, b"");
        assert_eq!(bytes_elements("x", &data).unwrap(), vec![&b"ab"[..], &b""[..]]);
        assert!(bytes_elements("x", &data[..data.len() - 5]).is_err());
        let t = Tensor { name: "x".into(), datatype: Datatype::Bytes, shape: vec![3], data };
        assert!(t.validate().unwrap_err().to_string().contains("holds 3 elements, got 2"));
    }

    #[test]
    fn validate_checks_byte_length() {
        let t = Tensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![2], data: vec![0; 7] };
        assert!(t.validate().unwrap_err().to_string().contains("needs 8 bytes"));
    }
}
