//! The `navigation.v1.Navigation` implementation.
//!
//! Both methods only read (the catalogue and the road graph never change while the adapter
//! runs), so unlike the parking adapter there is no state to lock and no idempotency store:
//! a retry asks the same question and gets the same answer. Identity is still read from the
//! gateway's metadata (`x-vehicle-vin`), for the logs only: places and routes are the same for
//! every car.

use std::sync::Arc;

use proto::metadata;
use proto::navigation::v1::navigation_server::{Navigation, NavigationServer};
use proto::navigation::v1::{RouteRequest, RouteResponse, SearchPlacesRequest, SearchPlacesResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::city::City;
use crate::places::Search;
use crate::{geo, routing};

/// The reference `Navigation` service; clones share one road graph.
#[derive(Clone)]
pub struct NavigationService {
    city: Arc<City>,
}

impl NavigationService {
    /// A service on the generated Shanghai city ([`City::shanghai`]).
    pub fn new() -> Self {
        NavigationService {
            city: Arc::new(City::shanghai()),
        }
    }

    /// The road network it routes on.
    pub fn city(&self) -> &City {
        &self.city
    }

    /// Wraps the service in the generated tonic server, ready for `Server::add_service`.
    pub fn into_server(self) -> NavigationServer<NavigationService> {
        NavigationServer::new(self)
    }

    /// Runs one call inside a span carrying the VIN and request id, and logs its outcome.
    fn handle<Req, Resp>(
        &self,
        method: &'static str,
        request: Request<Req>,
        work: impl FnOnce(&Self, Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status> {
        let text = |md: &MetadataMap, name: &str| {
            md.get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        // Only the VIN and request id are logged: where a car goes is personal data.
        let span = tracing::info_span!(
            "navigation",
            method,
            vin = text(request.metadata(), metadata::VIN),
            request_id = text(request.metadata(), metadata::REQUEST_ID)
        );
        let _entered = span.enter();
        let result = work(self, request.into_inner());
        match &result {
            Ok(_) => tracing::info!("ok"),
            Err(status) => tracing::info!(code = ?status.code(), message = status.message(), "rejected"),
        }
        result.map(Response::new)
    }

    fn search(&self, request: SearchPlacesRequest) -> Result<SearchPlacesResponse, Status> {
        let search = Search::from_request(request)?;
        Ok(SearchPlacesResponse { places: search.run() })
    }

    fn route(&self, request: RouteRequest) -> Result<RouteResponse, Status> {
        let point = |name: &str, point: Option<_>| {
            let point = point.ok_or_else(|| Status::invalid_argument(format!("{name} is required")))?;
            if !geo::is_valid(&point) {
                return Err(Status::invalid_argument(format!(
                    "{name} must have latitude within ±90 and longitude within ±180"
                )));
            }
            Ok(point)
        };
        let origin = point("origin", request.origin)?;
        let destination = point("destination", request.destination)?;
        routing::plan(&self.city, &origin, &destination)
    }
}

impl Default for NavigationService {
    fn default() -> Self {
        Self::new()
    }
}

#[tonic::async_trait]
impl Navigation for NavigationService {
    async fn search_places(
        &self,
        request: Request<SearchPlacesRequest>,
    ) -> Result<Response<SearchPlacesResponse>, Status> {
        self.handle("SearchPlaces", request, Self::search)
    }

    async fn route(&self, request: Request<RouteRequest>) -> Result<Response<RouteResponse>, Status> {
        // A* over a few hundred intersections takes well under a millisecond: no need for
        // spawn_blocking. A country-sized map would need it (or a routing engine of its own).
        self.handle("Route", request, Self::route)
    }
}

#[cfg(test)]
mod tests {
    use proto::MethodPath;
    use proto::json::Contracts;
    use proto::navigation::v1::PlaceCategory;

    use super::*;

    /// The `vehicle-agent call` examples of docs/partners.md, as the agent turns them into bytes.
    fn from_json<T: prost::Message + Default>(method: &str, json: &str) -> T {
        let bytes = Contracts::compiled()
            .request_from_json(&MethodPath::parse(method).unwrap(), json)
            .unwrap();
        T::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn the_documented_shell_calls_are_answered() {
        let service = NavigationService::new();
        let search: SearchPlacesRequest = from_json(
            "/navigation.v1.Navigation/SearchPlaces",
            r#"{"near":{"latitude":31.2365,"longitude":121.484},"category":"PLACE_CATEGORY_PARKING","radiusM":1000}"#,
        );
        assert_eq!(search.category(), PlaceCategory::Parking);
        assert_eq!(search.radius_m, 1_000);
        let places = service.search(search).unwrap().places;
        assert_eq!(places[0].parking_lot_id, "lot-bund-01");

        let route: RouteRequest = from_json(
            "/navigation.v1.Navigation/Route",
            r#"{"origin":{"latitude":31.2236,"longitude":121.4454},"destination":{"latitude":31.238,"longitude":121.488}}"#,
        );
        assert_eq!(service.route(route).unwrap().distance_m, 7_281);
    }
}
