//! Generates the gRPC service (the OIP GRPCInferenceService) from `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
