//! Points on the Earth: validity, great-circle distance and heading between two points, for
//! every contract's `GeoPoint` (`parking.v1` and `navigation.v1` each have their own).

/// Mean Earth radius (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A position in degrees: what the contracts' `GeoPoint` messages have in common.
pub trait Position {
    /// Latitude in degrees, positive north.
    fn latitude(&self) -> f64;
    /// Longitude in degrees, positive east.
    fn longitude(&self) -> f64;
}

impl Position for crate::parking::v1::GeoPoint {
    fn latitude(&self) -> f64 {
        self.latitude
    }
    fn longitude(&self) -> f64 {
        self.longitude
    }
}

impl Position for crate::navigation::v1::GeoPoint {
    fn latitude(&self) -> f64 {
        self.latitude
    }
    fn longitude(&self) -> f64 {
        self.longitude
    }
}

/// Whether `point` is a real position: finite, latitude within ±90° and longitude within ±180°.
pub fn is_valid(point: &impl Position) -> bool {
    let (latitude, longitude) = (point.latitude(), point.longitude());
    latitude.is_finite()
        && longitude.is_finite()
        && (-90.0..=90.0).contains(&latitude)
        && (-180.0..=180.0).contains(&longitude)
}

/// Great-circle distance between two points in metres (haversine formula).
///
/// Haversine treats the Earth as a sphere; the error (under 0.5 %) is far below what matters
/// for a city drive or choosing a car park.
pub fn distance_m(a: &impl Position, b: &impl Position) -> f64 {
    let (lat_a, lat_b) = (a.latitude().to_radians(), b.latitude().to_radians());
    let d_lat = lat_b - lat_a;
    let d_lon = (b.longitude() - a.longitude()).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    // min(1.0) guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial heading from `a` to `b`, in degrees clockwise from north, in `[0, 360)`.
pub fn bearing_deg(a: &impl Position, b: &impl Position) -> f64 {
    let (lat_a, lat_b) = (a.latitude().to_radians(), b.latitude().to_radians());
    let d_lon = (b.longitude() - a.longitude()).to_radians();
    let y = d_lon.sin() * lat_b.cos();
    let x = lat_a.cos() * lat_b.sin() - lat_a.sin() * lat_b.cos() * d_lon.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::navigation::v1::GeoPoint;

    fn point(latitude: f64, longitude: f64) -> GeoPoint {
        GeoPoint { latitude, longitude }
    }

    #[test]
    fn haversine_matches_known_distance() {
        // People's Square to Lujiazui IFC: about 2.8 km as the crow flies.
        let d = distance_m(&point(31.2317, 121.4726), &point(31.2368, 121.5018));
        assert!((2_700.0..2_900.0).contains(&d), "{d}");
        assert_eq!(distance_m(&point(31.2, 121.4), &point(31.2, 121.4)), 0.0);
        // Both contracts' points measure alike.
        let lot = crate::parking::v1::GeoPoint {
            latitude: 31.2368,
            longitude: 121.5018,
        };
        assert_eq!(distance_m(&point(31.2317, 121.4726), &lot), d);
    }

    #[test]
    fn bearings_point_the_right_way() {
        let origin = point(31.2, 121.4);
        let close = |a: f64, b: f64| (a - b).abs() < 0.5;
        assert!(close(bearing_deg(&origin, &point(31.3, 121.4)), 0.0));
        assert!(close(bearing_deg(&origin, &point(31.2, 121.5)), 90.0));
        assert!(close(bearing_deg(&origin, &point(31.1, 121.4)), 180.0));
        assert!(close(bearing_deg(&origin, &point(31.2, 121.3)), 270.0));
    }

    #[test]
    fn rejects_impossible_points() {
        assert!(is_valid(&point(31.2, 121.4)));
        assert!(!is_valid(&point(91.0, 0.0)));
        assert!(!is_valid(&point(0.0, -180.5)));
        assert!(!is_valid(&point(f64::NAN, 0.0)));
        assert!(!is_valid(&point(0.0, f64::INFINITY)));
    }
}
