//! Points on the Earth: validity, great-circle distance and heading between two points.

use proto::navigation::v1::GeoPoint;

/// Mean Earth radius (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Whether `point` is a real position: finite, latitude within ±90° and longitude within ±180°.
pub fn is_valid(point: &GeoPoint) -> bool {
    point.latitude.is_finite()
        && point.longitude.is_finite()
        && (-90.0..=90.0).contains(&point.latitude)
        && (-180.0..=180.0).contains(&point.longitude)
}

/// Great-circle distance between two points in metres (haversine formula).
///
/// The spherical Earth's error (under 0.5 %) is far below what matters for a city drive.
pub fn distance_m(a: &GeoPoint, b: &GeoPoint) -> f64 {
    let (lat_a, lat_b) = (a.latitude.to_radians(), b.latitude.to_radians());
    let d_lat = lat_b - lat_a;
    let d_lon = (b.longitude - a.longitude).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    // min(1.0) guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial heading from `a` to `b`, in degrees clockwise from north, in `[0, 360)`.
pub fn bearing_deg(a: &GeoPoint, b: &GeoPoint) -> f64 {
    let (lat_a, lat_b) = (a.latitude.to_radians(), b.latitude.to_radians());
    let d_lon = (b.longitude - a.longitude).to_radians();
    let y = d_lon.sin() * lat_b.cos();
    let x = lat_a.cos() * lat_b.sin() - lat_a.sin() * lat_b.cos() * d_lon.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The compass word for a heading: "north", "northeast", ...
pub fn compass(bearing_deg: f64) -> &'static str {
    const WORDS: [&str; 8] = [
        "north",
        "northeast",
        "east",
        "southeast",
        "south",
        "southwest",
        "west",
        "northwest",
    ];
    // Each word covers 45°, centred on its direction.
    let sector = ((bearing_deg.rem_euclid(360.0) + 22.5) / 45.0) as usize % 8;
    WORDS[sector]
}

/// A point from degrees.
pub const fn point(latitude: f64, longitude: f64) -> GeoPoint {
    GeoPoint { latitude, longitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distance() {
        // People's Square to Lujiazui IFC: about 2.8 km as the crow flies.
        let d = distance_m(&point(31.2317, 121.4726), &point(31.2368, 121.5018));
        assert!((2_700.0..2_900.0).contains(&d), "{d}");
        assert_eq!(distance_m(&point(31.2, 121.4), &point(31.2, 121.4)), 0.0);
    }

    #[test]
    fn bearings_point_the_right_way() {
        let origin = point(31.2, 121.4);
        let close = |a: f64, b: f64| (a - b).abs() < 0.5;
        assert!(close(bearing_deg(&origin, &point(31.3, 121.4)), 0.0));
        assert!(close(bearing_deg(&origin, &point(31.2, 121.5)), 90.0));
        assert!(close(bearing_deg(&origin, &point(31.1, 121.4)), 180.0));
        assert!(close(bearing_deg(&origin, &point(31.2, 121.3)), 270.0));
        assert_eq!(compass(0.0), "north");
        assert_eq!(compass(359.0), "north");
        assert_eq!(compass(90.0), "east");
        assert_eq!(compass(225.0), "southwest");
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
