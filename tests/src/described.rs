//! A partner for a service no Rust code of ours mentions: its `.proto` written and compiled at
//! test time ([`compile_proto`], with protox, as `protoc --descriptor_set_out` would), served from
//! its descriptors alone ([`start_described_partner`]), with the parking adapter's TLS and its
//! check that every call comes from the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ServiceDescriptor};
use proto::raw::{RawHandler, RawReply, RawService};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;

use crate::partner::{RunningPartner, serve_as_partner, tokio_listener};
use crate::pki::TestPki;

/// A contract compiled at test time: its descriptors, and the `FileDescriptorSet` file an
/// operator would install.
pub struct CompiledContract {
    /// The messages and services it declares.
    pub pool: DescriptorPool,
    /// The encoded `FileDescriptorSet` (imports included), written to disk.
    pub descriptor_set: PathBuf,
}

impl CompiledContract {
    /// The service named `name` (`package.Service`), which the contract must declare.
    pub fn service(&self, name: &str) -> ServiceDescriptor {
        self.pool
            .get_service_by_name(name)
            .unwrap_or_else(|| panic!("the contract declares no service {name}"))
    }
}

/// Writes `source` as `dir/<file>`, compiles it and writes its descriptor set next to it
/// (`<file>.pb`).
pub fn compile_proto(dir: &Path, file: &str, source: &str) -> CompiledContract {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("create the proto's directory");
    std::fs::write(&path, source).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let set = protox::compile([file], [dir]).unwrap_or_else(|e| panic!("compile {file}: {e}"));
    let descriptor_set = dir.join(format!("{file}.pb"));
    std::fs::write(&descriptor_set, set.encode_to_vec()).expect("write the descriptor set");
    let pool = DescriptorPool::from_file_descriptor_set(set).expect("a compiled set is a valid pool");
    CompiledContract { pool, descriptor_set }
}

/// How a described partner answers: from the method called, the decoded request and the
/// call's metadata, a response message or a status.
pub type DescribedAnswer =
    Arc<dyn Fn(&MethodDescriptor, DynamicMessage, &MetadataMap) -> Result<DynamicMessage, Status> + Send + Sync>;

/// Serves `service` on `listener` as a partner adapter (mTLS, gateway clients only), decoding
/// each request and encoding each answer by the descriptors.
pub fn start_described_partner(
    pki: &TestPki,
    listener: std::net::TcpListener,
    service: ServiceDescriptor,
    answer: DescribedAnswer,
) -> RunningPartner {
    let route = format!("/{}/{{*method}}", service.full_name());
    let router = Routes::default()
        .into_axum_router()
        .route_service(&route, RawService(Described { service, answer }));
    serve_as_partner(pki, tokio_listener(listener), Routes::from(router))
}

/// The service's methods, decoding each request and encoding each answer by the descriptors.
#[derive(Clone)]
struct Described {
    service: ServiceDescriptor,
    answer: DescribedAnswer,
}

impl RawHandler for Described {
    fn call(&self, path: &str, request: tonic::Request<Bytes>) -> RawReply {
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        let method = self.service.methods().find(|m| m.name() == name);
        let answer = self.answer.clone();
        Box::pin(async move {
            let method = method.ok_or_else(|| Status::unimplemented(format!("no method {name}")))?;
            let request_message = DynamicMessage::decode(method.input(), request.get_ref().clone())
                .map_err(|e| Status::invalid_argument(format!("not a {}: {e}", method.input().full_name())))?;
            let reply = answer(&method, request_message, request.metadata())?;
            Ok(tonic::Response::new(Bytes::from(reply.encode_to_vec())))
        })
    }
}
