//! The places the adapter knows (car parks, charging stations, restaurants) and how to search
//! them by distance, name and category.
//!
//! A real navigation partner has a points-of-interest database covering the country, and the
//! car parks in it come with the ids their operators use. The reference adapter ships a fixed
//! list: the six car parks of the reference parking adapter, with exactly its lot ids and
//! entrances (copied, not imported: this crate depends on no other adapter), so that a car can
//! find a car park here and pay for it there, and a few charging stations and restaurants near
//! them.

use proto::navigation::v1::{GeoPoint, Place, PlaceCategory, SearchPlacesRequest};
use tonic::Status;

use crate::geo;

/// Search radius used when a request leaves `radius_m` at 0.
pub const DEFAULT_RADIUS_M: u32 = 2_000;
/// Largest search radius a request may ask for.
pub const MAX_RADIUS_M: u32 = 50_000;
/// Number of places returned when a request leaves `max_results` at 0.
pub const DEFAULT_MAX_RESULTS: u32 = 10;
/// Most places one request may ask for.
pub const MAX_RESULTS: u32 = 50;
/// Longest name query, in characters.
pub const MAX_QUERY_CHARS: usize = 64;

/// One place of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaceInfo {
    /// This adapter's stable id.
    pub id: &'static str,
    /// Name in English.
    pub name: &'static str,
    /// Name in Chinese.
    pub local_name: &'static str,
    /// What it is.
    pub category: PlaceCategory,
    /// Latitude of the entrance, in degrees.
    pub latitude: f64,
    /// Longitude of the entrance, in degrees.
    pub longitude: f64,
    /// For a car park: its lot id at the parking operator (parking.v1 `lot_id`).
    pub parking_lot_id: Option<&'static str>,
}

/// A car park, whose id here is its lot id at the parking operator.
const fn parking(
    lot_id: &'static str,
    name: &'static str,
    local_name: &'static str,
    latitude: f64,
    longitude: f64,
) -> PlaceInfo {
    PlaceInfo {
        parking_lot_id: Some(lot_id),
        ..place(lot_id, PlaceCategory::Parking, name, local_name, latitude, longitude)
    }
}

/// A place of `category`, with no lot id at a parking operator.
const fn place(
    id: &'static str,
    category: PlaceCategory,
    name: &'static str,
    local_name: &'static str,
    latitude: f64,
    longitude: f64,
) -> PlaceInfo {
    PlaceInfo {
        id,
        name,
        local_name,
        category,
        latitude,
        longitude,
        parking_lot_id: None,
    }
}

/// The catalogue. The car parks' ids, names and coordinates are the reference parking
/// adapter's (adapters/parking/src/catalogue.rs); an end-to-end test checks they agree.
pub const PLACES: &[PlaceInfo] = &[
    parking(
        "lot-peoplessquare-01",
        "People's Square Underground Car Park",
        "人民广场地下停车场",
        31.2317,
        121.4726,
    ),
    parking(
        "lot-xintiandi-01",
        "Xintiandi South Block Car Park",
        "新天地南里停车场",
        31.2190,
        121.4760,
    ),
    parking(
        "lot-bund-01",
        "The Bund Riverside Garage",
        "外滩滨江停车库",
        31.2380,
        121.4880,
    ),
    parking(
        "lot-jingan-01",
        "Jing'an Temple Plaza Car Park",
        "静安寺广场停车场",
        31.2236,
        121.4454,
    ),
    parking(
        "lot-lujiazui-01",
        "Lujiazui IFC Car Park",
        "陆家嘴国金中心停车场",
        31.2368,
        121.5018,
    ),
    parking(
        "lot-xujiahui-01",
        "Xujiahui Grand Gateway Car Park",
        "徐家汇港汇恒隆广场停车场",
        31.1940,
        121.4375,
    ),
    place(
        "ev-peoplessquare-01",
        PlaceCategory::Charging,
        "State Grid Charging Station People's Square",
        "国家电网人民广场充电站",
        31.2330,
        121.4700,
    ),
    place(
        "ev-xintiandi-01",
        PlaceCategory::Charging,
        "TELD Xintiandi Charging Hub",
        "特来电新天地充电站",
        31.2178,
        121.4745,
    ),
    place(
        "ev-jingan-01",
        PlaceCategory::Charging,
        "NIO Power Swap Station Jing'an",
        "蔚来静安换电站",
        31.2250,
        121.4480,
    ),
    place(
        "ev-lujiazui-01",
        PlaceCategory::Charging,
        "Tesla Supercharger Lujiazui",
        "特斯拉陆家嘴超级充电站",
        31.2352,
        121.5003,
    ),
    place(
        "food-xintiandi-01",
        PlaceCategory::Restaurant,
        "Din Tai Fung Xintiandi",
        "鼎泰丰新天地店",
        31.2196,
        121.4752,
    ),
    place(
        "food-peoplessquare-01",
        PlaceCategory::Restaurant,
        "Jia Jia Tang Bao",
        "佳家汤包",
        31.2338,
        121.4738,
    ),
    place(
        "food-bund-01",
        PlaceCategory::Restaurant,
        "Lost Heaven on the Bund",
        "花马天堂外滩店",
        31.2365,
        121.4872,
    ),
    place(
        "food-jingan-01",
        PlaceCategory::Restaurant,
        "Xiao Yang Sheng Jian Jing'an",
        "小杨生煎静安店",
        31.2242,
        121.4470,
    ),
    place(
        "food-xujiahui-01",
        PlaceCategory::Restaurant,
        "Wang Baohe Restaurant Xujiahui",
        "王宝和酒家徐家汇店",
        31.1952,
        121.4390,
    ),
];

/// A checked search: what [`SearchPlacesRequest`] asks, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Around this point, within `radius_m`.
    pub near: Option<(GeoPoint, u32)>,
    /// Lower-cased text the name must contain.
    pub query: Option<String>,
    /// Only this category.
    pub category: Option<PlaceCategory>,
    /// At most this many.
    pub max_results: u32,
}

impl Search {
    /// Checks a request: INVALID_ARGUMENT naming the field for a bad point, no point and no
    /// query, an unknown category or a number above its cap.
    pub fn from_request(request: SearchPlacesRequest) -> Result<Search, Status> {
        let query = request.query.trim();
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(Status::invalid_argument(format!(
                "query is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let query = (!query.is_empty()).then(|| query.to_lowercase());
        if request.radius_m > MAX_RADIUS_M {
            return Err(Status::invalid_argument(format!(
                "radius_m {} is above the maximum of {MAX_RADIUS_M}",
                request.radius_m
            )));
        }
        if request.max_results > MAX_RESULTS {
            return Err(Status::invalid_argument(format!(
                "max_results {} is above the maximum of {MAX_RESULTS}",
                request.max_results
            )));
        }
        let category = match PlaceCategory::try_from(request.category) {
            Ok(PlaceCategory::Unspecified) => None,
            Ok(category) => Some(category),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "category {} is not a PlaceCategory",
                    request.category
                )));
            }
        };
        let near = match request.near {
            Some(point) if !geo::is_valid(&point) => {
                return Err(Status::invalid_argument(
                    "near must have latitude within ±90 and longitude within ±180",
                ));
            }
            Some(point) => Some((point, or_default(request.radius_m, DEFAULT_RADIUS_M))),
            None if query.is_none() => {
                return Err(Status::invalid_argument("give near, query or both"));
            }
            None => None,
        };
        Ok(Search {
            near,
            query,
            category,
            max_results: or_default(request.max_results, DEFAULT_MAX_RESULTS),
        })
    }

    /// The places that match, nearest first with a point (ties by id), else by name.
    pub fn run(&self) -> Vec<Place> {
        let mut found: Vec<(f64, &PlaceInfo)> = PLACES
            .iter()
            .filter(|place| self.category.is_none_or(|category| place.category == category))
            .filter(|place| self.query.as_deref().is_none_or(|query| place.is_named(query)))
            .filter_map(|place| match &self.near {
                None => Some((0.0, place)),
                Some((near, radius_m)) => {
                    let distance = geo::distance_m(near, &place.location());
                    (distance <= f64::from(*radius_m)).then_some((distance, place))
                }
            })
            .collect();
        found.sort_by(|(da, a), (db, b)| {
            da.total_cmp(db)
                .then_with(|| a.name.cmp(b.name))
                .then_with(|| a.id.cmp(b.id))
        });
        found
            .into_iter()
            .take(usize::try_from(self.max_results).unwrap_or(usize::MAX))
            .map(|(distance, place)| place.to_proto(distance))
            .collect()
    }
}

/// `value`, or `default` when it is 0 (proto3 cannot tell an unset field from 0).
fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

impl PlaceInfo {
    /// Where the entrance is.
    pub fn location(&self) -> GeoPoint {
        geo::point(self.latitude, self.longitude)
    }

    /// Whether either name contains `query` (already lower-case), ignoring case.
    fn is_named(&self, query: &str) -> bool {
        self.name.to_lowercase().contains(query) || self.local_name.to_lowercase().contains(query)
    }

    /// The place as the contract describes it, `distance_m` from the search's point.
    pub fn to_proto(&self, distance_m: f64) -> Place {
        Place {
            place_id: self.id.to_owned(),
            name: self.name.to_owned(),
            local_name: self.local_name.to_owned(),
            category: self.category.into(),
            location: Some(self.location()),
            // Saturating float-to-int cast: distances are non-negative and far below u32::MAX.
            distance_m: distance_m.round() as u32,
            parking_lot_id: self.parking_lot_id.unwrap_or_default().to_owned(),
        }
    }
}

#[cfg(test)]
#[path = "places_tests.rs"]
mod tests;
