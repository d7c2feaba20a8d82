//! Tests of the route planner on the generated city: one-way streets, travel times, steps,
//! and a property test over any two points.

use petgraph::graph::NodeIndex;
use proptest::prelude::*;
use tonic::Code;

use super::*;
use crate::city::{COLUMNS, LATITUDE_STEP, LONGITUDE_STEP, ROWS, SOUTH, WEST};

/// The intersection of east-west street `row` and north-south street `column`.
fn corner(city: &City, row: usize, column: usize) -> GeoPoint {
    city.location(NodeIndex::new(row * COLUMNS + column))
}

fn maneuvers(route: &RouteResponse) -> Vec<Maneuver> {
    route.steps.iter().map(|s| s.maneuver()).collect()
}

/// Seconds and metres of the path the polyline draws, summed from the graph's segments.
fn driven(city: &City, route: &RouteResponse) -> (f64, f64) {
    let node = |p: &GeoPoint| city.nearest_intersection(p).0;
    route.polyline.windows(2).fold((0.0, 0.0), |(time, length), pair| {
        let edge = city
            .graph()
            .find_edge(node(&pair[0]), node(&pair[1]))
            .expect("the polyline follows the roads in their direction");
        let segment = &city.graph()[edge];
        (time + segment.travel_time_s(), length + segment.length_m)
    })
}

/// Checks what every route promises: DEPART first, ARRIVE last, steps adding up, the ETA
/// being the sum of the segments' times, the polyline from start to end.
fn assert_consistent(city: &City, route: &RouteResponse) {
    let kinds = maneuvers(route);
    assert_eq!(kinds.last(), Some(&Maneuver::Arrive), "{kinds:?}");
    if route.polyline.len() > 1 {
        assert_eq!(kinds.first(), Some(&Maneuver::Depart), "{kinds:?}");
    }
    assert_eq!(route.steps.iter().map(|s| s.distance_m).sum::<u32>(), route.distance_m);
    assert_eq!(route.steps.iter().map(|s| s.duration_s).sum::<u32>(), route.duration_s);
    let (time, length) = driven(city, route);
    assert!(
        (f64::from(route.duration_s) - time).abs() <= 0.5,
        "{} vs {time}",
        route.duration_s
    );
    assert!(
        (f64::from(route.distance_m) - length).abs() <= 0.5,
        "{} vs {length}",
        route.distance_m
    );
    assert_eq!(route.polyline.first(), route.route_start.as_ref());
    assert_eq!(route.polyline.last(), route.route_end.as_ref());
}

#[test]
fn a_one_way_street_is_driven_only_its_way() {
    let city = City::shanghai();
    // Xietu Road (row 1) is one-way eastbound.
    let (west, east) = (corner(&city, 1, 3), corner(&city, 1, 5));
    let eastbound = plan(&city, &west, &east).unwrap();
    let westbound = plan(&city, &east, &west).unwrap();
    assert_consistent(&city, &eastbound);
    assert_consistent(&city, &westbound);

    assert_eq!(eastbound.polyline.len(), 3, "two blocks straight along Xietu Road");
    assert_eq!(eastbound.steps[0].instruction, "Head east on Xietu Road");
    assert!(westbound.distance_m > eastbound.distance_m);
    assert!(westbound.duration_s > eastbound.duration_s);
    let on_xietu_road = |p: &GeoPoint| (p.latitude - corner(&city, 1, 0).latitude).abs() < 1e-9;
    for pair in westbound.polyline.windows(2) {
        let against_traffic =
            on_xietu_road(&pair[0]) && on_xietu_road(&pair[1]) && pair[1].longitude < pair[0].longitude;
        assert!(!against_traffic, "drove west on Xietu Road: {pair:?}");
    }
    assert!(westbound.steps.iter().all(|s| s.street != "Xietu Road"));
}

#[test]
fn the_eta_is_each_segment_at_its_speed_limit() {
    let city = City::shanghai();
    // Four blocks of Yan'an Road (60 km/h), the fastest way between its own corners.
    let route = plan(&city, &corner(&city, 6, 8), &corner(&city, 6, 12)).unwrap();
    assert_consistent(&city, &route);
    let length: f64 = (8..12)
        .map(|c| geo::distance_m(&corner(&city, 6, c), &corner(&city, 6, c + 1)))
        .sum();
    assert_eq!(route.distance_m, length.round() as u32);
    assert_eq!(route.duration_s, (length / (60.0 / 3.6)).round() as u32);
}

#[test]
fn steps_merge_a_street_and_say_where_its_name_changes() {
    let city = City::shanghai();
    let route = plan(&city, &corner(&city, 6, 8), &corner(&city, 6, 12)).unwrap();
    let instructions: Vec<&str> = route.steps.iter().map(|s| s.instruction.as_str()).collect();
    assert_eq!(
        instructions,
        [
            "Head east on Yan'an West Road",
            "Continue onto Yan'an East Road",
            "Arrive at your destination"
        ]
    );
    assert_eq!(
        maneuvers(&route),
        [Maneuver::Depart, Maneuver::Continue, Maneuver::Arrive]
    );
    assert_eq!(
        route.steps[1].location.as_ref(),
        Some(&corner(&city, 6, 10)),
        "at Xizang Road"
    );
    assert_eq!(route.steps[2].distance_m, 0);
}

#[test]
fn turns_are_told_by_the_change_of_heading() {
    assert_eq!(maneuver(0.0, 90.0), Maneuver::TurnRight);
    assert_eq!(maneuver(0.0, 270.0), Maneuver::TurnLeft);
    assert_eq!(maneuver(90.0, 0.0), Maneuver::TurnLeft);
    assert_eq!(maneuver(350.0, 10.0), Maneuver::Continue);
    assert_eq!(maneuver(0.0, 180.0), Maneuver::UTurn);
    assert_eq!(maneuver(270.0, 100.0), Maneuver::UTurn);

    // A route with a turn: from Yan'an Road north up Xizang Road.
    let city = City::shanghai();
    let route = plan(&city, &corner(&city, 6, 8), &corner(&city, 8, 10)).unwrap();
    assert_consistent(&city, &route);
    let turns: Vec<&Step> = route
        .steps
        .iter()
        .filter(|s| s.maneuver() == Maneuver::TurnLeft)
        .collect();
    assert!(!turns.is_empty(), "{:?}", route.steps);
    assert!(turns.iter().all(|s| s.instruction.starts_with("Turn left onto ")));
}

#[test]
fn points_between_intersections_snap_to_the_nearest_and_say_how_far() {
    let city = City::shanghai();
    let near = |p: &GeoPoint, dlat: f64| geo::point(p.latitude + dlat, p.longitude);
    let (from, to) = (corner(&city, 3, 3), corner(&city, 3, 6));
    let route = plan(&city, &near(&from, 0.001), &near(&to, -0.001)).unwrap();
    assert_eq!(route.route_start.as_ref(), Some(&from));
    assert_eq!(route.route_end.as_ref(), Some(&to));
    assert!(
        (105..=118).contains(&route.origin_approach_m),
        "{}",
        route.origin_approach_m
    );
    assert!((105..=118).contains(&route.destination_approach_m));
}

#[test]
fn the_same_place_is_arrived_at_at_once() {
    let city = City::shanghai();
    let here = corner(&city, 4, 4);
    let route = plan(&city, &here, &here).unwrap();
    assert_eq!((route.distance_m, route.duration_s), (0, 0));
    assert_eq!(maneuvers(&route), [Maneuver::Arrive]);
    assert_eq!(route.polyline, [here]);
}

#[test]
fn a_point_off_the_map_is_not_found_and_named() {
    let city = City::shanghai();
    let beijing = geo::point(39.9042, 116.4074);
    let err = plan(&city, &beijing, &corner(&city, 1, 1)).unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().starts_with("origin (39.90420, 116.40740)"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("central Shanghai"), "{}", err.message());
    let err = plan(&city, &corner(&city, 1, 1), &beijing).unwrap_err();
    assert!(err.message().starts_with("destination"), "{}", err.message());
}

/// Degrees beyond the grid's edge the property test still draws points from: well past the
/// snapping distance, so that both outcomes occur.
const MARGIN_DEG: f64 = 0.02;

fn point_around_the_city() -> impl Strategy<Value = GeoPoint> {
    let north = SOUTH + LATITUDE_STEP * (ROWS - 1) as f64;
    let east = WEST + LONGITUDE_STEP * (COLUMNS - 1) as f64;
    (
        SOUTH - MARGIN_DEG..north + MARGIN_DEG,
        WEST - MARGIN_DEG..east + MARGIN_DEG,
    )
        .prop_map(|(latitude, longitude)| geo::point(latitude, longitude))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any two points of the city have a route; a point off the map is NOT_FOUND, never anything else.
    #[test]
    fn any_two_points_have_a_route_or_a_clear_error(
        origin in point_around_the_city(),
        destination in point_around_the_city(),
    ) {
        let city = City::shanghai();
        let on_the_map = |p: &GeoPoint| city.nearest_intersection(p).1 <= MAX_APPROACH_M;
        match plan(&city, &origin, &destination) {
            Ok(route) => {
                prop_assert!(on_the_map(&origin) && on_the_map(&destination));
                assert_consistent(&city, &route);
            }
            Err(status) => {
                prop_assert!(!on_the_map(&origin) || !on_the_map(&destination), "{status:?}");
                prop_assert_eq!(status.code(), Code::NotFound);
                prop_assert!(status.message().contains("from the nearest road of the map"));
            }
        }
    }
}

/// A known drive, to the metre and second: the generator and the planner give the same answer
/// on every build and machine (a change here must be deliberate, and the docs' examples with it).
#[test]
fn jingan_to_the_bund_is_the_same_drive_on_every_build() {
    let city = City::shanghai();
    let jingan = geo::point(31.2236, 121.4454);
    let bund = geo::point(31.2380, 121.4880);
    let route = plan(&city, &jingan, &bund).unwrap();
    assert_consistent(&city, &route);
    assert_eq!(
        (route.distance_m, route.duration_s, route.polyline.len()),
        (7_281, 495, 16)
    );
    let instructions: Vec<&str> = route.steps.iter().map(|s| s.instruction.as_str()).collect();
    assert_eq!(
        instructions,
        [
            "Head south on Huashan Road",
            "Turn left onto Yan'an West Road",
            "Turn left onto Xizang Road",
            "Turn right onto Beijing East Road",
            "Turn left onto Henan Road",
            "Arrive at your destination",
        ]
    );
}
