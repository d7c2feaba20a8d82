//! The car parks this adapter sells parking at, and how to find the ones near a car.
//!
//! A real partner would read lots, prices and occupancy from its own systems. The reference
//! adapter ships a fixed catalogue of Shanghai lots so that demos and tests are reproducible.

use proto::parking::v1::{GeoPoint, Lot, Money};

use crate::pricing::PriceRules;

// Haversine treats the Earth as a sphere; the error (under 0.5 %) is far below what matters
// when choosing a car park.
pub use proto::adapter::geo::{distance_m, is_valid};

/// Currency of every price in the catalogue (ISO 4217).
pub const CURRENCY: &str = "CNY";

/// Search radius used when a request leaves `radius_m` at 0.
pub const DEFAULT_RADIUS_M: u32 = 2_000;

/// Number of lots returned when a request leaves `max_results` at 0.
pub const DEFAULT_MAX_RESULTS: u32 = 10;

/// One car park of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LotInfo {
    /// Stable identifier that cars send back in `StartSession`.
    pub id: &'static str,
    /// Name shown on the dashboard and printed on receipts.
    pub name: &'static str,
    /// Latitude of the entrance, in degrees.
    pub latitude: f64,
    /// Longitude of the entrance, in degrees.
    pub longitude: f64,
    /// What a stay costs.
    pub price: PriceRules,
    /// Free spaces, as the lot's sensors last reported them.
    pub free_spaces: u32,
}

/// The fixed catalogue: six lots in central Shanghai. People's Square and the Bund are busy
/// enough to bill from the first minute; the others give 15 or 30 free minutes for a drop-off.
pub const LOTS: &[LotInfo] = &[
    LotInfo {
        id: "lot-peoplessquare-01",
        name: "People's Square Underground Car Park",
        latitude: 31.2317,
        longitude: 121.4726,
        price: PriceRules {
            free_minutes: 0,
            hourly_rate_fen: 1_200,
            daily_cap_fen: 8_000,
        },
        free_spaces: 156,
    },
    LotInfo {
        id: "lot-xintiandi-01",
        name: "Xintiandi South Block Car Park",
        latitude: 31.2190,
        longitude: 121.4760,
        price: PriceRules {
            free_minutes: 15,
            hourly_rate_fen: 2_000,
            daily_cap_fen: 12_000,
        },
        free_spaces: 18,
    },
    LotInfo {
        id: "lot-bund-01",
        name: "The Bund Riverside Garage",
        latitude: 31.2380,
        longitude: 121.4880,
        price: PriceRules {
            free_minutes: 0,
            hourly_rate_fen: 2_500,
            daily_cap_fen: 15_000,
        },
        free_spaces: 7,
    },
    LotInfo {
        id: "lot-jingan-01",
        name: "Jing'an Temple Plaza Car Park",
        latitude: 31.2236,
        longitude: 121.4454,
        price: PriceRules {
            free_minutes: 15,
            hourly_rate_fen: 1_500,
            daily_cap_fen: 9_000,
        },
        free_spaces: 42,
    },
    LotInfo {
        id: "lot-lujiazui-01",
        name: "Lujiazui IFC Car Park",
        latitude: 31.2368,
        longitude: 121.5018,
        price: PriceRules {
            free_minutes: 15,
            hourly_rate_fen: 2_000,
            daily_cap_fen: 12_000,
        },
        free_spaces: 230,
    },
    LotInfo {
        id: "lot-xujiahui-01",
        name: "Xujiahui Grand Gateway Car Park",
        latitude: 31.1940,
        longitude: 121.4375,
        price: PriceRules {
            free_minutes: 30,
            hourly_rate_fen: 1_000,
            daily_cap_fen: 6_000,
        },
        free_spaces: 64,
    },
];

/// The lot with id `lot_id`, if the catalogue has one.
pub fn find(lot_id: &str) -> Option<&'static LotInfo> {
    LOTS.iter().find(|lot| lot.id == lot_id)
}

/// Lots within `radius_m` of `near`, nearest first, at most `max_results` of them.
///
/// Zero means "the default" for both limits, because proto3 cannot tell an unset field from 0.
pub fn nearby(near: &GeoPoint, radius_m: u32, max_results: u32) -> Vec<Lot> {
    let radius_m = if radius_m == 0 { DEFAULT_RADIUS_M } else { radius_m };
    let max_results = if max_results == 0 {
        DEFAULT_MAX_RESULTS
    } else {
        max_results
    };

    let mut found: Vec<(f64, &LotInfo)> = LOTS
        .iter()
        .map(|lot| (distance_m(near, &lot.location()), lot))
        .filter(|(distance, _)| *distance <= f64::from(radius_m))
        .collect();
    // Ties broken by id so that the order never depends on the catalogue's layout.
    found.sort_by(|(da, a), (db, b)| da.total_cmp(db).then_with(|| a.id.cmp(b.id)));
    found
        .into_iter()
        .take(usize::try_from(max_results).unwrap_or(usize::MAX))
        .map(|(distance, lot)| lot.to_proto(distance))
        .collect()
}

impl LotInfo {
    /// Where the lot is.
    pub fn location(&self) -> GeoPoint {
        GeoPoint {
            latitude: self.latitude,
            longitude: self.longitude,
        }
    }

    /// The hourly price as a contract `Money`.
    pub fn price_per_hour(&self) -> Money {
        Money {
            currency: CURRENCY.to_owned(),
            amount_minor: self.price.hourly_rate_fen,
        }
    }

    /// The lot as the contract describes it, `distance_m` away from the caller.
    pub fn to_proto(&self, distance_m: f64) -> Lot {
        Lot {
            lot_id: self.id.to_owned(),
            name: self.name.to_owned(),
            location: Some(self.location()),
            // Saturating float-to-int cast: distances are non-negative and far below u32::MAX.
            distance_m: distance_m.round() as u32,
            price_per_hour: Some(self.price_per_hour()),
            free_spaces: self.free_spaces,
            price_rules: Some(self.price.to_proto()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(latitude: f64, longitude: f64) -> GeoPoint {
        GeoPoint { latitude, longitude }
    }

    #[test]
    fn ids_are_unique() {
        for (i, lot) in LOTS.iter().enumerate() {
            assert!(LOTS[i + 1..].iter().all(|other| other.id != lot.id), "{}", lot.id);
        }
    }

    #[test]
    fn nearby_applies_defaults_and_orders_by_distance() {
        let lots = nearby(&point(31.2317, 121.4726), 0, 0);
        let ids: Vec<&str> = lots.iter().map(|l| l.lot_id.as_str()).collect();
        assert_eq!(ids, ["lot-peoplessquare-01", "lot-xintiandi-01", "lot-bund-01"]);
        assert!(lots.iter().all(|l| l.distance_m <= DEFAULT_RADIUS_M));
        assert_eq!(nearby(&point(31.2317, 121.4726), 50_000, 0).len(), LOTS.len());
        assert_eq!(nearby(&point(31.2317, 121.4726), 50_000, 2).len(), 2);
        assert!(nearby(&point(0.0, 0.0), 0, 0).is_empty());
    }
}
