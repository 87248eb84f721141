//! check: a request's inputs against what the model declares and the limits it takes.

use super::*;

/// A BYTES element of `len` bytes fits `limits`.
pub(super) fn check_element(input: &str, index: usize, len: usize, limits: InputLimits) -> Result<()> {
    if len > limits.max_element {
        return Err(Error::InputTooLarge(format!(
            "input '{input}': element {index} is {len} bytes; this model takes BYTES elements of at most {} bytes \
             ([limits] max_bytes_element_kib in its model.toml, else the server's --max-bytes-element-kib)",
            limits.max_element
        )));
    }
    Ok(())
}

/// The inputs' data fits `limits`: each BYTES element, and all of it together.
pub(super) fn check_sizes(inputs: &[Tensor], limits: InputLimits) -> Result<()> {
    for input in inputs.iter().filter(|i| i.datatype == Datatype::Bytes) {
        for (index, element) in bytes_elements(&input.name, &input.data)?.into_iter().enumerate() {
            check_element(&input.name, index, element.len(), limits)?;
        }
    }
    let total: usize = inputs.iter().map(|i| i.data.len()).sum();
    if total > limits.max_total {
        let each: Vec<String> = inputs.iter().map(|i| format!("'{}' {}", i.name, i.data.len())).collect();
        return Err(Error::InputTooLarge(format!(
            "the inputs hold {total} bytes of data ({}); this model takes at most {} per request \
             ([limits] max_input_kib in its model.toml)",
            each.join(", "),
            limits.max_total
        )));
    }
    Ok(())
}

/// Every input the model declares is present, with its datatype, a fitting shape, and data
/// within `limits`.
pub fn check_inputs(inputs: &[Tensor], declared: &[TensorSpec], limits: InputLimits) -> Result<()> {
    for input in inputs {
        let Some(spec) = declared.iter().find(|s| s.name == input.name) else {
            let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::bad_request(format!(
                "unknown input '{}': the model's inputs are {names:?}",
                input.name
            )));
        };
        if input.datatype != spec.datatype {
            return Err(Error::bad_request(format!(
                "input '{}' must be {}, got {}",
                input.name, spec.datatype, input.datatype
            )));
        }
        let fits = input.shape.len() == spec.shape.len()
            && input.shape.iter().zip(&spec.shape).all(|(&got, &want)| want < 0 || got == want);
        if !fits {
            return Err(Error::bad_request(format!(
                "input '{}' has shape {:?}; the model takes {:?} (-1: any size)",
                input.name, input.shape, spec.shape
            )));
        }
        if inputs.iter().filter(|i| i.name == input.name).count() > 1 {
            return Err(Error::bad_request(format!("input '{}' appears twice", input.name)));
        }
    }
    if let Some(missing) = declared.iter().find(|s| !inputs.iter().any(|i| i.name == s.name)) {
        return Err(Error::bad_request(format!("missing input '{}'", missing.name)));
    }
    check_sizes(inputs, limits)
}
