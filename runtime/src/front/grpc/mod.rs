//! grpc: the Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`
//! (`runtime/proto/grpc_predict_v2.proto`), on the same port as REST (HTTP/2 without TLS,
//! as gRPC clients speak it by default).
//!
//! It shares the REST path's pipeline: the same input checks, schedule, metrics and spans.
//! Tensors arrive in `raw_input_contents` (what `tritonclient.grpc` sends) or as typed
//! `contents`; outputs always leave in `raw_output_contents`, so their bytes are moved into
//! the response, never re-encoded. Of Triton's additions it serves the model configuration,
//! the statistics and the model repository's calls (load and unload behind the control
//! token, where the REST control endpoints are served), and `ModelStreamInfer` ([`stream`]).

mod stream;

use super::control;
use super::http::request_id;
use crate::config::TensorSpec;
use crate::decode::{self, InferRequest, RequestedOutput};
use crate::error::{Error, Result};
use crate::pipeline::{Answer, AppState, Inference, ModelPath, Payload};
use crate::proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::proto::*;
use crate::tensor::{Datatype, Tensor, element_count, push_bytes_element};
use axum::http::HeaderMap;
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The path prefix gRPC calls arrive under.
pub const PATH: &str = "/inference.GRPCInferenceService/{*method}";

/// Calls whose body is a stream of messages that lasts as long as the client (Triton's
/// bidirectional `ModelStreamInfer`): the connection layer charges their bodies per message
/// and keeps no deadline between messages (see `crate::net::listen::Limits::streams`).
pub const STREAM_PATHS: [&str; 1] = ["/inference.GRPCInferenceService/ModelStreamInfer"];

/// The repository's control calls, each served where the REST control endpoints are (see
/// [`crate::front::control_router`]) and behind the same token.
pub const CONTROL_PATHS: [&str; 2] = [
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
];

/// Whether a service answers the repository's control calls ([`CONTROL_PATHS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Yes, to a caller with the control token.
    Here,
    /// No: they are served on the control port (`--control-port`) only.
    Elsewhere,
}

/// The service over the server's state; messages up to `max_message_bytes` (the REST body
/// limit) either way.
pub fn service(
    state: AppState,
    max_message_bytes: usize,
    control: Control,
) -> GrpcInferenceServiceServer<Grpc> {
    GrpcInferenceServiceServer::new(Grpc(state, control))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX)
}

/// The path of the standard gRPC health service's calls (`grpc.health.v1.Health`).
pub const HEALTH_PATH: &str = "/grpc.health.v1.Health/{*method}";

/// How often a `Watch` of the health service looks at the status again.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// `grpc.health.v1.Health` (Check and Watch), what Kubernetes' `grpc:` probes and gRPC load
/// balancers ask: the service `""` and `inference.GRPCInferenceService` follow the server's
/// readiness (`/v2/health/ready`), a model's (or route's) name that model's
/// (`/v2/models/{m}/ready`); other names are NOT_FOUND (Watch: SERVICE_UNKNOWN). Check
/// answers from the state now; Watch looks every 250 ms and sends each change.
pub fn health(state: AppState) -> HealthServer<Health> {
    HealthServer::new(Health(state))
}

/// The health handlers.
pub struct Health(AppState);

/// `service`'s status now: SERVING, NOT_SERVING, or SERVICE_UNKNOWN.
fn health_status(state: &AppState, service: &str) -> ServingStatus {
    let serving = |ready: bool| if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    use tonic::server::NamedService;
    if service.is_empty() || service == GrpcInferenceServiceServer::<Grpc>::NAME {
        return serving(state.ready());
    }
    match state.model_ready(&path(service.to_string(), String::new())) {
        Ok(()) => ServingStatus::Serving,
        Err(Error::NotFound(_)) => ServingStatus::ServiceUnknown,
        Err(_) => ServingStatus::NotServing,
    }
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match health_status(&self.0, &service) {
            ServingStatus::ServiceUnknown => {
                Err(Status::not_found(format!("no service or model '{service}'")))
            }
            status => ok(HealthCheckResponse { status: status as i32 }),
        }
    }

    type WatchStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (state, service) = (self.0.clone(), request.into_inner().service);
        let changes = futures::stream::unfold(None, move |last: Option<ServingStatus>| {
            let (state, service) = (state.clone(), service.clone());
            async move {
                loop {
                    let now = health_status(&state, &service);
                    if Some(now) != last {
                        return Some((Ok(HealthCheckResponse { status: now as i32 }), Some(now)));
                    }
                    tokio::time::sleep(HEALTH_EVERY).await;
                }
            }
        });
        ok(Box::pin(changes) as Self::WatchStream)
    }
}

/// The gRPC handlers: the server's state, and whether the control calls are served here.
#[derive(Clone)]
pub struct Grpc(AppState, Control);

impl Grpc {
    /// A control call may run here: this is where they are served, and the caller has the
    /// token.
    fn control<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        if self.1 == Control::Elsewhere {
            let elsewhere = format!("{call} is served on the control port (--control-port) only");
            return Err(status(Error::Forbidden(elsewhere)));
        }
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        control::allowed(&self.0, authorization, call).map_err(status)
    }
}

/// A load's or unload's parameters, as [`control::refuse_parameters`] takes them.
fn parameters(
    parameters: &HashMap<String, ModelRepositoryParameter>,
) -> impl Iterator<Item = (&str, Option<bool>)> {
    use model_repository_parameter::ParameterChoice;
    parameters.iter().map(|(name, value)| {
        let value = match value.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => Some(b),
            None => Some(false),
            Some(_) => None,
        };
        (name.as_str(), value)
    })
}

fn ok<T>(message: T) -> Result<Response<T>, Status> {
    Ok(Response::new(message))
}

/// An error as a gRPC status: the code `Error::grpc_code` maps it to, and its text.
fn status(e: Error) -> Status {
    Status::new(tonic::Code::from_i32(e.grpc_code()), e.to_string())
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        ok(ServerLiveResponse { live: true })
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        ok(ServerReadyResponse { ready: self.0.ready() })
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        ok(ModelReadyResponse { ready: self.0.model_ready(&path(r.name, r.version)).is_ok() })
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        ok(super::triton::server_metadata())
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        // As REST's: a route answers with the metadata of a variant it picks.
        let (name, config) = self.0.declared(&path(r.name, r.version)).map_err(status)?;
        let tensors = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.name().into(),
                    shape: s.shape.clone(),
                })
                .collect()
        };
        ok(ModelMetadataResponse {
            versions: self.0.repository().versions(&name),
            platform: config.platform(),
            inputs: tensors(&config.inputs),
            outputs: tensors(&config.outputs),
            name,
        })
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let (name, config) = self.0.declared(&path(r.name, r.version)).map_err(status)?;
        ok(ModelConfigResponse { config: Some(crate::front::triton::config(&name, &config)) })
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let path = (!r.name.is_empty()).then(|| path(r.name, r.version));
        ok(ModelStatisticsResponse {
            model_stats: crate::front::triton::statistics(&self.0, path.as_ref()).map_err(status)?,
        })
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = super::triton::index(&self.0)
            .into_iter()
            .filter(|(_, status)| !ready_only || matches!(status.state, crate::repository::State::Ready(_)))
            .map(|(model, _)| model)
            .collect();
        ok(RepositoryIndexResponse { models })
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.control(&request, "RepositoryModelLoad")?;
        let r = request.into_inner();
        control::refuse_parameters(parameters(&r.parameters), &[]).map_err(status)?;
        control::load(&self.0, r.model_name).await.map_err(status)?;
        ok(RepositoryModelLoadResponse {})
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.control(&request, "RepositoryModelUnload")?;
        let r = request.into_inner();
        // tritonclient always sends unload_dependents (false unless asked).
        control::refuse_parameters(parameters(&r.parameters), &["unload_dependents"]).map_err(status)?;
        control::unload(&self.0, &r.model_name).map_err(status)?;
        ok(RepositoryModelUnloadResponse {})
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        ok(self.infer(request.into_inner(), &headers).await?)
    }

    type ModelStreamInferStream = stream::Responses;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        ok(stream::answer(self.clone(), request.into_inner(), headers))
    }
}

impl Grpc {
    /// One inference, as `ModelInfer` and `ModelStreamInfer` answer a tensor model.
    async fn infer(
        &self,
        request: ModelInferRequest,
        headers: &HeaderMap,
    ) -> Result<ModelInferResponse, Status> {
        let id = request_id(Some(&request.id), headers);
        let path = path(request.model_name.clone(), request.model_version.clone());
        let payload = Payload::Tensors(decode(request));
        let inference = Inference { path, id: &id, headers, payload, logged_body: None };
        let Answer { model, variant, request, outputs, observation, .. } =
            self.0.infer(inference).await.answer.map_err(status)?;
        let response = encode(&model.name, &model.config.version, &request, outputs);
        observation.close(response.as_ref().map(|_| ()));
        let mut response = response.map_err(status)?;
        if let Some(variant) = variant {
            let variant = infer_parameter::ParameterChoice::StringParam(variant);
            response.parameters.insert("variant".into(), InferParameter { parameter_choice: Some(variant) });
        }
        Ok(response)
    }
}

fn path(model: String, version: String) -> ModelPath {
    ModelPath { model, version: Some(version).filter(|v| !v.is_empty()) }
}

/// A protobuf request into the form the pipeline takes (which checks it against the model as
/// it checks REST's).
fn decode(request: ModelInferRequest) -> Result<InferRequest> {
    within_limits(&request)?;
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs: give every input's data there, or none",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = decode::datatype(&input.name, &input.datatype)?;
        let data = match (raw.next(), input.contents) {
            (Some(data), None) => data,
            (None, Some(contents)) => {
                let count = element_count(&input.name, &input.shape)?;
                contents_data(&input.name, datatype, count, contents)?
            }
            (Some(_), Some(_)) => {
                return Err(Error::bad_request(format!(
                    "input '{}' has both contents and raw_input_contents",
                    input.name
                )));
            }
            (None, None) => return Err(Error::bad_request(format!("input '{}' has no data", input.name))),
        };
        let tensor = Tensor { name: input.name, datatype, shape: input.shape, data };
        tensor.validate()?;
        inputs.push(tensor);
    }
    Ok(InferRequest {
        id: Some(request.id).filter(|id| !id.is_empty()),
        params: params(request.parameters)?,
        inputs,
        outputs: request
            .outputs
            .into_iter()
            .map(|o| RequestedOutput { name: o.name, binary: None })
            .collect(),
        binary_outputs: true,
    })
}

/// The limits REST's parser holds a body to, on a request protobuf already parsed: inputs
/// and outputs, dimensions, parameters (the request's, each input's and output's), with
/// REST's words. The elements a shape holds are counted (and capped) as each input is read.
fn within_limits(request: &ModelInferRequest) -> Result<()> {
    use decode::{MAX_PARAMETERS, MAX_RANK, MAX_TENSORS, at_most};
    at_most(request.inputs.len(), MAX_TENSORS, "inputs")?;
    at_most(request.outputs.len(), MAX_TENSORS, "outputs")?;
    at_most(request.raw_input_contents.len(), MAX_TENSORS, "raw_input_contents")?;
    at_most(request.parameters.len(), MAX_PARAMETERS, "parameters")?;
    for input in &request.inputs {
        at_most(input.shape.len(), MAX_RANK, "dimensions")?;
        at_most(input.parameters.len(), MAX_PARAMETERS, "parameters")?;
    }
    request.outputs.iter().try_for_each(|o| at_most(o.parameters.len(), MAX_PARAMETERS, "parameters"))
}

/// Request parameters as the plugin gets them, through the one path REST's take
/// ([`decode::parameters`]: the count capped, strings as they are, numbers and booleans as
/// JSON writes them), in name order.
fn params(parameters: HashMap<String, InferParameter>) -> Result<Vec<(String, String)>> {
    use infer_parameter::ParameterChoice as P;
    let object: serde_json::Map<String, serde_json::Value> = parameters
        .into_iter()
        .filter_map(|(name, value)| {
            let value = match value.parameter_choice? {
                P::StringParam(s) => s.into(),
                P::BoolParam(b) => b.into(),
                P::Int64Param(i) => i.into(),
                P::Uint64Param(u) => u.into(),
                P::DoubleParam(d) => d.into(),
            };
            Some((name, value))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    decode::parameters(&serde_json::Value::Object(object).to_string())
}

/// Typed `contents` into wire bytes: each datatype from the list the protocol assigns it.
fn contents_data(name: &str, datatype: Datatype, count: usize, c: InferTensorContents) -> Result<Vec<u8>> {
    let mismatch = |got: usize| {
        Error::bad_request(format!("input '{name}': its shape holds {count} elements but contents has {got}"))
    };
    let out_of_range =
        || Error::bad_request(format!("input '{name}': a value is out of range for {datatype}"));
    macro_rules! le {
        ($list:expr, $ty:ty) => {{
            let list = $list;
            if list.len() != count {
                return Err(mismatch(list.len()));
            }
            let mut out = Vec::with_capacity(count * size_of::<$ty>());
            for v in list {
                out.extend(<$ty>::try_from(v).map_err(|_| out_of_range())?.to_le_bytes());
            }
            out
        }};
    }
    Ok(match datatype {
        Datatype::Bool => le!(c.bool_contents.into_iter().map(u8::from).collect::<Vec<_>>(), u8),
        Datatype::Int8 => le!(c.int_contents, i8),
        Datatype::Int16 => le!(c.int_contents, i16),
        Datatype::Int32 => le!(c.int_contents, i32),
        Datatype::Int64 => le!(c.int64_contents, i64),
        Datatype::Uint8 => le!(c.uint_contents, u8),
        Datatype::Uint16 => le!(c.uint_contents, u16),
        Datatype::Uint32 => le!(c.uint_contents, u32),
        Datatype::Uint64 => le!(c.uint64_contents, u64),
        Datatype::Fp32 => le!(c.fp32_contents, f32),
        Datatype::Fp64 => le!(c.fp64_contents, f64),
        Datatype::Bytes => {
            if c.bytes_contents.len() != count {
                return Err(mismatch(c.bytes_contents.len()));
            }
            let mut out = Vec::new();
            for element in &c.bytes_contents {
                push_bytes_element(&mut out, element);
            }
            out
        }
        Datatype::Fp16 | Datatype::Bf16 => {
            return Err(Error::bad_request(format!(
                "input '{name}': {datatype} has no typed contents list; send it in raw_input_contents"
            )));
        }
    })
}

/// The selected outputs, their bytes moved into `raw_output_contents`.
fn encode(
    model: &str,
    version: &str,
    request: &InferRequest,
    outputs: Vec<Tensor>,
) -> Result<ModelInferResponse> {
    let selected = crate::encode::select(request, outputs)?;
    let mut response = ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: request.id.clone().unwrap_or_default(),
        parameters: HashMap::new(),
        outputs: Vec::with_capacity(selected.len()),
        raw_output_contents: Vec::with_capacity(selected.len()),
    };
    for (tensor, _) in selected {
        response.outputs.push(model_infer_response::InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.name().into(),
            shape: tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        response.raw_output_contents.push(tensor.data);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_contents_become_wire_bytes_and_are_checked() {
        let ints = InferTensorContents { int_contents: vec![1, -2], ..Default::default() };
        assert_eq!(contents_data("x", Datatype::Int16, 2, ints.clone()).unwrap(), vec![1, 0, 0xfe, 0xff]);
        let err = contents_data("x", Datatype::Int16, 3, ints).unwrap_err().to_string();
        assert!(err.contains("holds 3 elements but contents has 2"), "{err}");
        let big = InferTensorContents { int_contents: vec![300], ..Default::default() };
        assert!(contents_data("x", Datatype::Int8, 1, big).unwrap_err().to_string().contains("out of range"));
        let text = InferTensorContents { bytes_contents: vec![b"ab".to_vec()], ..Default::default() };
        assert_eq!(contents_data("t", Datatype::Bytes, 1, text).unwrap(), vec![2, 0, 0, 0, b'a', b'b']);
        let half = contents_data("h", Datatype::Fp16, 1, InferTensorContents::default());
        assert!(half.unwrap_err().to_string().contains("raw_input_contents"));
    }

    #[test]
    fn parameters_reach_the_plugin_as_text() {
        use infer_parameter::ParameterChoice as P;
        let p = |c| InferParameter { parameter_choice: Some(c) };
        let rendered = params(HashMap::from([
            ("a".to_string(), p(P::BoolParam(false))),
            ("b".to_string(), p(P::StringParam("x y".into()))),
            ("c".to_string(), p(P::Int64Param(-3))),
            ("d".to_string(), p(P::DoubleParam(0.5))),
        ]))
        .unwrap();
        let expected = [("a", "false"), ("b", "x y"), ("c", "-3"), ("d", "0.5")];
        assert_eq!(rendered, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }
}
