//! A model.toml: parsing and checking never panics, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = wasmserve_protocol::config::ModelConfig::parse(text) {
        // What the checks let through is usable: at least one execution, declared tensors.
        assert!(config.executions() > 0);
        assert!(!config.inputs.is_empty() && !config.outputs.is_empty());
    }
});
