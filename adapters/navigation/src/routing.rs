//! Routes: the fastest drive between two points on the city's roads, and its turn-by-turn
//! steps.
//!
//! Both points are snapped to the nearest intersection; A* (petgraph) finds the path of least
//! travel time between them, each segment costing its length over its speed limit, guided by
//! the straight-line distance at the city's top speed (never more than the real time left, so
//! the path found is the fastest). Consecutive segments of one street make one step; the
//! change of heading between two steps says which way to turn.

use petgraph::algo::astar;
use petgraph::graph::NodeIndex;
use proto::navigation::v1::{GeoPoint, Maneuver, RouteResponse, Step};
use tonic::Status;

use crate::city::{City, RoadSegment};
use crate::geo;

/// Farthest a route's origin or destination may be from the nearest intersection, in metres:
/// beyond it the point is off the map (NOT_FOUND).
pub const MAX_APPROACH_M: f64 = 1_000.0;

/// Smallest change of heading, in degrees, that is a turn rather than carrying straight on.
const TURN_DEG: f64 = 30.0;
/// Largest change of heading, in degrees, that is a turn rather than a U-turn.
const U_TURN_DEG: f64 = 150.0;

/// The fastest route from `origin` to `destination`; NOT_FOUND when either is off the map.
///
/// Both points must already be valid positions ([`geo::is_valid`]).
pub fn plan(city: &City, origin: &GeoPoint, destination: &GeoPoint) -> Result<RouteResponse, Status> {
    let (start, origin_approach_m) = snap(city, "origin", origin)?;
    let (goal, destination_approach_m) = snap(city, "destination", destination)?;
    let goal_location = city.location(goal);
    let top_speed_mps = f64::from(city.top_speed_kmh()) / 3.6;
    let (_, path) = astar(
        city.graph(),
        start,
        |node| node == goal,
        |segment| segment.weight().travel_time_s(),
        |node| geo::distance_m(&city.location(node), &goal_location) / top_speed_mps,
    )
    // The generated city is strongly connected (a test checks it), so this is only a guard.
    .ok_or_else(|| Status::not_found("no road leads from the origin to the destination"))?;

    let blocks: Vec<Block<'_>> = path
        .windows(2)
        .map(|pair| {
            let edge = city
                .graph()
                .find_edge(pair[0], pair[1])
                .expect("consecutive intersections of a path are joined by a segment");
            Block {
                from: pair[0],
                to: pair[1],
                segment: &city.graph()[edge],
            }
        })
        .collect();
    let (steps, distance_m, duration_s) = steps(city, &blocks, goal);
    Ok(RouteResponse {
        distance_m,
        duration_s,
        polyline: path.iter().map(|&node| city.location(node)).collect(),
        steps,
        route_start: Some(city.location(start)),
        origin_approach_m: round_m(origin_approach_m),
        route_end: Some(goal_location),
        destination_approach_m: round_m(destination_approach_m),
    })
}

/// The intersection nearest `point` and its distance, or NOT_FOUND if it is too far.
fn snap(city: &City, which: &str, point: &GeoPoint) -> Result<(NodeIndex, f64), Status> {
    let (node, distance_m) = city.nearest_intersection(point);
    if distance_m > MAX_APPROACH_M {
        return Err(Status::not_found(format!(
            "{which} ({:.5}, {:.5}) is {:.0} m from the nearest road of the map, more than {MAX_APPROACH_M:.0} m: \
             the map covers {}",
            point.latitude,
            point.longitude,
            distance_m,
            city.area()
        )));
    }
    Ok((node, distance_m))
}

/// One road segment of a path, driven from `from` to `to`.
struct Block<'a> {
    from: NodeIndex,
    to: NodeIndex,
    segment: &'a RoadSegment,
}

/// Consecutive blocks on one street: what one step covers.
struct Stretch<'a> {
    street: &'static str,
    blocks: &'a [Block<'a>],
}

/// The steps of a path (DEPART, turns, ARRIVE at `goal`), and its total distance and duration.
///
/// Each step's distance and duration are the rounded running totals' differences, so the
/// steps add up exactly to the rounded totals.
fn steps(city: &City, blocks: &[Block<'_>], goal: NodeIndex) -> (Vec<Step>, u32, u32) {
    let heading = |block: &Block<'_>| geo::bearing_deg(&city.location(block.from), &city.location(block.to));
    let mut steps = Vec::new();
    let mut distance = RunningTotal::default();
    let mut duration = RunningTotal::default();
    let mut previous: Option<&Block<'_>> = None;
    for stretch in stretches(blocks) {
        let first = &stretch.blocks[0];
        let maneuver = match previous {
            None => Maneuver::Depart,
            Some(last) => maneuver(heading(last), heading(first)),
        };
        let instruction = match maneuver {
            Maneuver::Depart => format!("Head {} on {}", geo::compass(heading(first)), stretch.street),
            Maneuver::Continue => format!("Continue onto {}", stretch.street),
            Maneuver::TurnLeft => format!("Turn left onto {}", stretch.street),
            Maneuver::TurnRight => format!("Turn right onto {}", stretch.street),
            _ => format!("Make a U-turn onto {}", stretch.street),
        };
        steps.push(Step {
            maneuver: maneuver.into(),
            instruction,
            street: stretch.street.to_owned(),
            location: Some(city.location(first.from)),
            distance_m: distance.add(stretch.blocks.iter().map(|b| b.segment.length_m).sum()),
            duration_s: duration.add(stretch.blocks.iter().map(|b| b.segment.travel_time_s()).sum()),
        });
        previous = stretch.blocks.last();
    }
    steps.push(Step {
        maneuver: Maneuver::Arrive.into(),
        instruction: "Arrive at your destination".to_owned(),
        street: String::new(),
        location: Some(city.location(goal)),
        distance_m: 0,
        duration_s: 0,
    });
    (steps, distance.rounded, duration.rounded)
}

/// Splits a path into runs of blocks on the same street.
fn stretches<'a>(blocks: &'a [Block<'a>]) -> Vec<Stretch<'a>> {
    blocks
        .chunk_by(|a, b| a.segment.street == b.segment.street)
        .map(|run| Stretch {
            street: run[0].segment.street,
            blocks: run,
        })
        .collect()
}

/// The maneuver from heading `before` to heading `after` (degrees clockwise from north).
pub fn maneuver(before: f64, after: f64) -> Maneuver {
    // The signed change of heading in [-180, 180): positive is clockwise, to the right.
    let change = (after - before + 540.0).rem_euclid(360.0) - 180.0;
    match change.abs() {
        c if c < TURN_DEG => Maneuver::Continue,
        c if c <= U_TURN_DEG && change > 0.0 => Maneuver::TurnRight,
        c if c <= U_TURN_DEG => Maneuver::TurnLeft,
        _ => Maneuver::UTurn,
    }
}

/// A sum of exact amounts, handed out as whole units whose own sum is the rounded total.
#[derive(Default)]
struct RunningTotal {
    exact: f64,
    rounded: u32,
}

impl RunningTotal {
    /// Adds `amount` and returns the whole units it adds to the rounded total.
    fn add(&mut self, amount: f64) -> u32 {
        self.exact += amount;
        let rounded = round_m(self.exact);
        let added = rounded - self.rounded;
        self.rounded = rounded;
        added
    }
}

/// A non-negative amount rounded to a whole number (saturating; amounts here are city-sized).
fn round_m(amount: f64) -> u32 {
    amount.round() as u32
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
