//! Generates the gRPC service (the OIP GRPCInferenceService) from `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_client(false).build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
