//! Generates the gRPC service (the OIP GRPCInferenceService) from `proto/`, and builds the
//! built-in text plugin (`plugins/text`, for `[text]` models) that the binary carries.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    grpc()?;
    text_plugin()
}

/// `plugins/text` for wasm32-wasip2, copied to `$OUT_DIR/text_plugin.wasm` for
/// `include_bytes!`. It builds in the plugins' own target directory (`make plugins` builds it
/// there too, so neither builds it twice), never in the one this build holds locked.
/// `WASMSERVE_TEXT_PLUGIN` names a prebuilt one instead.
fn text_plugin() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("text_plugin.wasm");
    println!("cargo:rerun-if-env-changed=WASMSERVE_TEXT_PLUGIN");
    if let Ok(prebuilt) = std::env::var("WASMSERVE_TEXT_PLUGIN") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &out).map_err(|e| format!("WASMSERVE_TEXT_PLUGIN={prebuilt}: {e}"))?;
        return Ok(());
    }
    let plugins = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../plugins");
    for watched in ["Cargo.toml", "Cargo.lock", "text", "sdk/src", "sdk/Cargo.toml", "sdk/wit"] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    let target = plugins.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "-p", "text-plugin"])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target);
    // What this build was given for the host must not reach the plugin's build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build.status().map_err(|e| format!("cannot run cargo for plugins/text: {e}"))?;
    if !status.success() {
        return Err("cannot build the built-in text plugin (plugins/text) for wasm32-wasip2: is the target \
                    installed? `rustup target add wasm32-wasip2`"
            .into());
    }
    std::fs::copy(target.join("wasm32-wasip2/release/text_plugin.wasm"), &out)?;
    Ok(())
}

/// The gRPC service and messages from `proto/`.
fn grpc() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // The server metadata, Triton's model configuration and statistics answer REST too, as
    // the same messages in JSON with the proto's field names (what Triton's HTTP endpoints
    // send).
    let json = [
        "ServerMetadataResponse",
        "ModelConfig",
        "ModelInput",
        "ModelOutput",
        "ModelDynamicBatching",
        "ModelStatisticsResponse",
        "ModelStatistics",
        "InferStatistics",
        "InferBatchStatistics",
        "StatisticDuration",
    ];
    let mut builder = tonic_prost_build::configure().build_client(false).build_transport(false);
    for message in json {
        builder = builder.message_attribute(format!(".inference.{message}"), "#[derive(serde::Serialize)]");
    }
    builder
        // Data types by name (`TYPE_FP32`), as Triton's JSON has them.
        .field_attribute(
            ".inference.ModelInput.data_type",
            r#"#[serde(serialize_with = "crate::proto::data_type")]"#,
        )
        .field_attribute(
            ".inference.ModelOutput.data_type",
            r#"#[serde(serialize_with = "crate::proto::data_type")]"#,
        )
        .field_attribute(
            ".inference.ModelConfig.dynamic_batching",
            r#"#[serde(skip_serializing_if = "Option::is_none")]"#,
        )
        .compile_fds(descriptors)?;
    Ok(())
}
