//! Tests of the places catalogue and its search: by radius, name, category, and the caps.

use tonic::Code;

use super::*;

const PEOPLES_SQUARE: GeoPoint = geo::point(31.2317, 121.4726);

fn request() -> SearchPlacesRequest {
    SearchPlacesRequest::default()
}

fn search(request: SearchPlacesRequest) -> Vec<Place> {
    Search::from_request(request).expect("a valid search").run()
}

fn ids(places: &[Place]) -> Vec<&str> {
    places.iter().map(|p| p.place_id.as_str()).collect()
}

fn refused(request: SearchPlacesRequest) -> String {
    let status = Search::from_request(request).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status.message().to_owned()
}

#[test]
fn ids_are_unique_and_every_car_park_names_its_lot() {
    for (i, place) in PLACES.iter().enumerate() {
        assert!(PLACES[i + 1..].iter().all(|other| other.id != place.id), "{}", place.id);
        assert_eq!(
            place.parking_lot_id.is_some(),
            place.category == PlaceCategory::Parking,
            "{}",
            place.id
        );
    }
    assert_eq!(
        PLACES.iter().filter(|p| p.category == PlaceCategory::Parking).count(),
        6
    );
}

#[test]
fn near_a_point_is_within_the_radius_and_nearest_first() {
    let places = search(SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        radius_m: 1_000,
        ..request()
    });
    assert_eq!(places[0].place_id, "lot-peoplessquare-01");
    assert_eq!(places[0].distance_m, 0);
    assert!(
        places.windows(2).all(|w| w[0].distance_m <= w[1].distance_m),
        "{places:?}"
    );
    assert!(places.iter().all(|p| p.distance_m <= 1_000));
    assert!(!ids(&places).contains(&"lot-bund-01"), "the Bund is 1.7 km away");

    // The default radius (2 km) reaches the Bund but not Lujiazui (2.8 km).
    let places = search(SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        max_results: MAX_RESULTS,
        ..request()
    });
    assert!(ids(&places).contains(&"lot-bund-01"));
    assert!(!ids(&places).contains(&"lot-lujiazui-01"));
    // Far from the city there is nothing, and that is not an error.
    assert!(
        search(SearchPlacesRequest {
            near: Some(geo::point(0.0, 0.0)),
            ..request()
        })
        .is_empty()
    );
}

#[test]
fn by_category_only_that_category() {
    let parking = search(SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        radius_m: MAX_RADIUS_M,
        category: PlaceCategory::Parking.into(),
        ..request()
    });
    assert_eq!(parking.len(), 6);
    assert!(
        parking
            .iter()
            .all(|p| p.category() == PlaceCategory::Parking && !p.parking_lot_id.is_empty())
    );
    let charging = search(SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        radius_m: MAX_RADIUS_M,
        category: PlaceCategory::Charging.into(),
        ..request()
    });
    assert_eq!(ids(&charging)[0], "ev-peoplessquare-01");
    assert!(
        charging
            .iter()
            .all(|p| p.category() == PlaceCategory::Charging && p.parking_lot_id.is_empty())
    );
}

#[test]
fn by_name_ignoring_case_in_english_or_chinese() {
    let named = |query: &str| {
        ids(&search(SearchPlacesRequest {
            query: query.into(),
            ..request()
        }))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    assert_eq!(named("ifc"), ["lot-lujiazui-01"]);
    assert_eq!(named("  LUJIAZUI "), ["lot-lujiazui-01", "ev-lujiazui-01"]);
    assert_eq!(
        named("人民广场"),
        ["lot-peoplessquare-01", "ev-peoplessquare-01"],
        "by name"
    );
    assert_eq!(
        named("新天地"),
        ["food-xintiandi-01", "ev-xintiandi-01", "lot-xintiandi-01"]
    );
    assert!(named("Hangzhou").is_empty());

    // Name and point together: both must match.
    let near_and_named = search(SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        query: "xintiandi".into(),
        category: PlaceCategory::Parking.into(),
        ..request()
    });
    assert_eq!(ids(&near_and_named), ["lot-xintiandi-01"]);
    assert!(near_and_named[0].distance_m > 1_000);
}

#[test]
fn max_results_has_a_default_and_a_cap() {
    let everywhere = |max_results| SearchPlacesRequest {
        near: Some(PEOPLES_SQUARE),
        radius_m: MAX_RADIUS_M,
        max_results,
        ..request()
    };
    assert_eq!(search(everywhere(0)).len(), DEFAULT_MAX_RESULTS as usize);
    assert_eq!(search(everywhere(3)).len(), 3);
    assert_eq!(search(everywhere(MAX_RESULTS)).len(), PLACES.len());
    assert!(refused(everywhere(MAX_RESULTS + 1)).contains("max_results 51 is above the maximum of 50"));
}

#[test]
fn bad_searches_are_refused_naming_what_is_wrong() {
    assert!(refused(request()).contains("give near, query or both"));
    assert!(
        refused(SearchPlacesRequest {
            query: "   ".into(),
            ..request()
        })
        .contains("give near, query or both")
    );
    assert!(
        refused(SearchPlacesRequest {
            near: Some(geo::point(95.0, 121.0)),
            ..request()
        })
        .contains("near must have latitude within ±90")
    );
    assert!(
        refused(SearchPlacesRequest {
            near: Some(PEOPLES_SQUARE),
            radius_m: MAX_RADIUS_M + 1,
            ..request()
        })
        .contains("radius_m 50001 is above the maximum of 50000")
    );
    assert!(
        refused(SearchPlacesRequest {
            query: "停".repeat(MAX_QUERY_CHARS + 1),
            ..request()
        })
        .contains("query is longer than 64 characters")
    );
    // Exactly at the cap is fine.
    assert!(
        search(SearchPlacesRequest {
            query: "停".repeat(MAX_QUERY_CHARS),
            ..request()
        })
        .is_empty()
    );
    assert!(
        refused(SearchPlacesRequest {
            query: "bund".into(),
            category: 42,
            ..request()
        })
        .contains("category 42 is not a PlaceCategory")
    );
}
