//! gRPC with the messages left as bytes: a codec that passes them through untouched
//! ([`RawCodec`]), a server for unary calls of any path ([`RawService`]) and a client of them
//! ([`RawClient`]).
//!
//! The gateway brokers calls for services it has no generated code for, and the agent
//! forwards in-car calls without decoding them; both only move bytes.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::client::Grpc as GrpcClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, UnaryService};
use tonic::transport::{Channel, Endpoint};

/// Encodes and decodes gRPC messages as opaque [`Bytes`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// The encoding half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// The decoding half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a [`RawHandler`] answers a call with, in time.
pub type RawReply = BoxFuture<tonic::Response<Bytes>, Status>;

/// Answers unary gRPC calls whose messages stay bytes, whatever method is called.
pub trait RawHandler: Clone + Send + 'static {
    /// Answers one call of `path` (`/package.Service/Method`).
    fn call(&self, path: &str, request: tonic::Request<Bytes>) -> RawReply;
}

/// A tower service answering every path it is routed for as a unary gRPC method, by its
/// [`RawHandler`]; a route for `/package.Service/{*method}` serves a whole service.
#[derive(Debug, Clone)]
pub struct RawService<H>(pub H);

impl<H, B> Service<http::Request<B>> for RawService<H>
where
    H: RawHandler,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = RawCall {
            handler: self.0.clone(),
            path: req.uri().path().to_owned(),
        };
        Box::pin(async move { Ok(Grpc::new(RawCodec).unary(call, req).await) })
    }
}

/// One call: knows its path, which the codec-level request no longer carries.
struct RawCall<H> {
    handler: H,
    path: String,
}

impl<H: RawHandler> UnaryService<Bytes> for RawCall<H> {
    type Response = Bytes;
    type Future = RawReply;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        self.handler.call(&self.path, request)
    }
}

/// A client calling unary gRPC methods of any path, the messages left as bytes.
#[derive(Debug, Clone)]
pub struct RawClient {
    grpc: GrpcClient<Channel>,
}

impl RawClient {
    /// Connects to the server at `uri` (`http://host:port`).
    pub async fn connect(uri: String) -> Result<RawClient, tonic::transport::Error> {
        let channel = Endpoint::from_shared(uri)?.connect().await?;
        Ok(RawClient {
            grpc: GrpcClient::new(channel),
        })
    }

    /// Calls `path` (`/package.Service/Method`) with `request`.
    pub async fn unary(
        &mut self,
        path: &str,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<Bytes>, Status> {
        let path = http::uri::PathAndQuery::try_from(path)
            .map_err(|e| Status::invalid_argument(format!("{path:?} is not a gRPC path: {e}")))?;
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the server is not ready: {e}")))?;
        self.grpc.unary(request, path, RawCodec).await
    }
}
