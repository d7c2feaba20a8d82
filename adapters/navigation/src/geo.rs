//! Points on the Earth: validity, great-circle distance and heading between two points (the
//! partner kit's, in `proto`), and the words and helpers this adapter adds.

pub use proto::adapter::geo::{bearing_deg, distance_m, is_valid};
use proto::navigation::v1::GeoPoint;

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
    fn headings_have_compass_words() {
        let origin = point(31.2, 121.4);
        assert_eq!(compass(bearing_deg(&origin, &point(31.3, 121.4))), "north");
        assert_eq!(compass(bearing_deg(&origin, &point(31.2, 121.5))), "east");
        assert_eq!(compass(0.0), "north");
        assert_eq!(compass(359.0), "north");
        assert_eq!(compass(90.0), "east");
        assert_eq!(compass(225.0), "southwest");
    }
}
