//! The agent's own local API, `agent.v1.VehicleAgent`: results of earlier calls and events.
//!
//! An app sees only the results of its own calls (see [`crate::owner`]): another app's request
//! id gets UNKNOWN, exactly as an id never used, so that nothing tells it the request exists.
//!
//! Events are the car's, not an app's: every app may subscribe and see them all, and the one
//! cursor an `AckEvents` moves is the car's (see [`crate::events`]).

use std::pin::Pin;

use futures::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use proto::agent::v1::vehicle_agent_server::{VehicleAgent, VehicleAgentServer};
use proto::agent::v1::{
    AckEventsRequest, AckEventsResponse, GetResultRequest, GetResultResponse, ResultState, SubscribeEventsRequest,
};
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
        request: Request<SubscribeEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let feed = self.link.subscribe_events(request.into_inner().after_sequence)?;
        // Ends when the agent shuts down: the server's graceful stop waits for open streams.
        let stream = futures::stream::unfold(feed, |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok(event), feed))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_events(&self, request: Request<AckEventsRequest>) -> Result<Response<AckEventsResponse>, Status> {
        let kept = self.link.ack_events(request.into_inner().up_to_sequence).await?;
        Ok(Response::new(AckEventsResponse {
            kept: u64::try_from(kept).unwrap_or(u64::MAX),
        }))
    }
}
