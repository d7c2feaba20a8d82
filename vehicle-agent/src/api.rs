//! The agent's own local API, `agent.v1.VehicleAgent`: results of earlier calls and events.
//!
//! An app sees only the results of its own calls (see [`crate::owner`]): another app's request
//! id gets UNKNOWN, exactly as an id never used, so that nothing tells it the request exists.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::debug;

use proto::agent::v1::vehicle_agent_server::{VehicleAgent, VehicleAgentServer};
use proto::agent::v1::{GetResultRequest, GetResultResponse, ResultState, SubscribeEventsRequest};
use proto::vehicle::v1::Event;

use crate::link::GatewayLink;
use crate::outbox::Lookup;
use crate::owner::Owner;

/// Response metadata of `GetResult` naming the request's gRPC method (when DONE), so a client
/// can decode the payload; `GetResultResponse` has no field for it.
pub const METHOD_METADATA: &str = "x-agent-method";

/// Serves `agent.v1.VehicleAgent` from the gateway link.
#[derive(Debug, Clone)]
pub struct AgentApi {
    link: GatewayLink,
}

impl AgentApi {
    /// The API over `link`.
    pub fn new(link: GatewayLink) -> AgentApi {
        AgentApi { link }
    }

    /// As a tonic service.
    pub fn into_service(self) -> VehicleAgentServer<AgentApi> {
        VehicleAgentServer::new(self)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl VehicleAgent for AgentApi {
    async fn get_result(&self, request: Request<GetResultRequest>) -> Result<Response<GetResultResponse>, Status> {
        let owner = Owner::of_request(&request)?;
        let id = request.into_inner().request_id;
        let (state, response, method) = match self.link.result(&id, &owner).await? {
            Lookup::Unknown => (ResultState::Unknown, None, None),
            Lookup::Pending => (ResultState::Pending, None, None),
            Lookup::Done(result) => (ResultState::Done, result.response, Some(result.method)),
        };
        let mut reply = Response::new(GetResultResponse {
            state: state as i32,
            response,
        });
        if let Some(value) = method.and_then(|m| MetadataValue::try_from(m).ok()) {
            reply.metadata_mut().insert(METHOD_METADATA, value);
        }
        Ok(reply)
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        _request: Request<SubscribeEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let events = self.link.events();
        let closed = self.link.closed();
        // Ends when the agent shuts down: the server's graceful stop waits for open streams.
        let stream = futures::stream::unfold(Some((events, closed)), |state| async move {
            let (mut events, mut closed) = state?;
            let item = tokio::select! {
                _ = closed.wait_for(|c| *c) => return None,
                item = events.recv() => item,
            };
            match item {
                Ok(event) => Some((Ok(event), Some((events, closed)))),
                Err(RecvError::Closed) => None,
                // Tell the app rather than skip silently; it may resubscribe.
                Err(RecvError::Lagged(n)) => {
                    debug!(missed = n, "an event subscriber fell behind");
                    let status = Status::data_loss(format!("missed {n} events: this subscriber fell behind"));
                    Some((Err(status), None))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
