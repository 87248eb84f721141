//! pad: requests of different lengths in one batch (`[batching] pad` and `cut`): each
//! request's length-wise graph inputs padded along dimension 1 to the batch's longest, its
//! length-wise outputs cut back to its own length, so each request gets what it would have
//! got alone.

use crate::config::Batching;
use crate::tensor::{Datatype, Tensor};
use std::collections::BTreeMap;

/// How a model's batches are padded.
#[derive(Clone, Debug, Default)]
pub(super) struct Padding {
    /// The padded inputs and the value of their padding.
    pad: BTreeMap<String, f64>,
    /// The outputs cut back to each request's length.
    cut: Vec<String>,
}

impl Padding {
    pub(super) fn new(batching: &Batching) -> Self {
        Self { pad: batching.pad.clone(), cut: batching.cut.clone() }
    }

    /// Whether input `name`'s dimension 1 is a length, padded to the batch's longest.
    pub(super) fn pads(&self, name: &str) -> bool {
        self.pad.contains_key(name)
    }

    /// A request's length: dimension 1 of its padded inputs, which must agree (0 without
    /// padding).
    pub(super) fn length(&self, inputs: &[Tensor]) -> Result<usize, String> {
        let mut length = None;
        for t in inputs.iter().filter(|t| self.pads(&t.name)) {
            let Some(&dim) = t.shape.get(1) else {
                return Err(format!(
                    "graph input '{}' in [batching] pad has no dimension 1: {:?}",
                    t.name, t.shape
                ));
            };
            let dim =
                usize::try_from(dim).map_err(|_| format!("graph input '{}': shape {:?}", t.name, t.shape))?;
            match length {
                Some((first, name)) if first != dim => {
                    return Err(format!(
                        "graph inputs '{name}' and '{}' in [batching] pad differ in dimension 1 ({first} vs {dim})",
                        t.name
                    ));
                }
                _ => length = Some((dim, &t.name)),
            }
        }
        Ok(length.map_or(0, |(dim, _)| dim))
    }

    /// Appends `t`'s rows to `into`, each padded from `t`'s length to `longest` along
    /// dimension 1 with the input's padding value.
    pub(super) fn pad(&self, t: &Tensor, longest: usize, into: &mut Vec<u8>) -> Result<(), String> {
        let value = self.pad[&t.name];
        let element = element(t.datatype, value).map_err(|e| format!("graph input '{}': {e}", t.name))?;
        let rows = t.shape[0].max(0) as usize;
        let length = t.shape[1].max(0) as usize;
        let inner: usize = t.shape[2..].iter().map(|&d| d.max(0) as usize).product();
        let row = length * inner * element.len();
        let padding = element.repeat((longest - length) * inner);
        for r in 0..rows {
            into.extend_from_slice(&t.data[r * row..][..row]);
            into.extend_from_slice(&padding);
        }
        Ok(())
    }

    /// Cuts a request's outputs named in `cut` from the batch's `longest` back to its
    /// `length` along dimension 1.
    pub(super) fn cut(&self, outputs: &mut [Tensor], length: usize, longest: usize) -> Result<(), String> {
        for t in outputs.iter_mut().filter(|t| self.cut.contains(&t.name)) {
            if t.shape.get(1).map(|&d| d as usize) != Some(longest) {
                return Err(format!(
                    "graph output '{}' in [batching] cut has shape {:?}: its dimension 1 is not the batch's \
                     padded length ({longest})",
                    t.name, t.shape
                ));
            }
            if length == longest {
                continue;
            }
            let rows = t.shape[0].max(0) as usize;
            let row = t.data.len() / rows.max(1);
            let kept = row / longest * length;
            let mut data = Vec::with_capacity(rows * kept);
            for r in 0..rows {
                data.extend_from_slice(&t.data[r * row..][..kept]);
            }
            t.data = data;
            t.shape[1] = length as i64;
        }
        Ok(())
    }
}

/// One element of `datatype` holding `value`, checked as a request's JSON data is (the
/// protocol's encoder of a number into any datatype).
fn element(datatype: Datatype, value: f64) -> Result<Vec<u8>, String> {
    crate::decode::number_element(datatype, value)
        .ok_or_else(|| format!("[batching] pad value {value} does not fit its {} elements", datatype.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(shape: Vec<i64>, values: &[i64]) -> Tensor {
        Tensor {
            name: "ids".into(),
            datatype: Datatype::Int64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn padding() -> Padding {
        Padding { pad: BTreeMap::from([("ids".to_string(), 7.0)]), cut: vec!["hidden".into()] }
    }

    #[test]
    fn rows_are_padded_to_the_longest_with_the_value() {
        let mut data = Vec::new();
        padding().pad(&ids(vec![2, 2], &[1, 2, 3, 4]), 3, &mut data).unwrap();
        assert_eq!(data, ids(vec![2, 3], &[1, 2, 7, 3, 4, 7]).data);
        assert_eq!(padding().length(&[ids(vec![2, 2], &[0; 4])]), Ok(2));
        let other = Tensor { name: "mask".into(), ..ids(vec![2, 5], &[0; 10]) };
        assert_eq!(padding().length(&[other]), Ok(0), "inputs not in `pad` have no length");
    }

    #[test]
    fn outputs_are_cut_back_to_the_requests_length() {
        // [1 row, 3 positions, 2 values]: the request had 2 positions.
        let mut outputs = vec![Tensor { name: "hidden".into(), ..ids(vec![1, 3, 2], &[1, 2, 3, 4, 5, 6]) }];
        padding().cut(&mut outputs, 2, 3).unwrap();
        assert_eq!(
            (outputs[0].shape.clone(), outputs[0].data.clone()),
            (vec![1, 2, 2], ids(vec![4], &[1, 2, 3, 4]).data)
        );
        let err = padding().cut(&mut outputs, 2, 3).unwrap_err();
        assert!(err.contains("not the batch's padded length (3)"), "{err}");
    }

    #[test]
    fn padding_values_take_the_inputs_type() {
        assert_eq!(element(Datatype::Int32, 1.0).unwrap(), 1i32.to_le_bytes());
        assert_eq!(element(Datatype::Fp32, 0.5).unwrap(), 0.5f32.to_le_bytes());
        assert_eq!(element(Datatype::Fp16, 1.0).unwrap(), half::f16::ONE.to_le_bytes());
        assert_eq!(element(Datatype::Bool, 1.0).unwrap(), [1]);
        assert!(element(Datatype::Int64, 0.5).unwrap_err().contains("does not fit its INT64 elements"));
        // Out of range: refused, not wrapped (300 as UINT8 would have been 44).
        assert!(element(Datatype::Uint8, 300.0).is_err());
        assert!(element(Datatype::Uint32, -1.0).is_err());
        assert!(element(Datatype::Bool, 2.0).is_err());
        assert!(element(Datatype::Bytes, 0.0).is_err());
    }
}
